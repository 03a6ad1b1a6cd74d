"""``eval.json`` / ``eval.md``: every suite's numbers for every model, side by side.

``results`` maps suite -> model key -> a nested dict of numbers; a confidence-interval estimate is a dict with
``value``/``ci_low``/``ci_high`` and is shown in markdown as ``value [low, high]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DIGITS = 4


def is_estimate(value: Any) -> bool:
    """Whether ``value`` is an :class:`~alignment.evaluation.stats.Estimate` in dict form."""
    return isinstance(value, dict) and {"value", "ci_low", "ci_high"} <= set(value)


def format_value(value: Any) -> str:
    """Markdown text of one cell: estimates as ``v [lo, hi]``, floats rounded, other scalars as is."""
    if is_estimate(value):
        return f"{format_value(value['value'])} [{format_value(value['ci_low'])}, {format_value(value['ci_high'])}]"
    if isinstance(value, float):
        return f"{value:.{DIGITS}f}"
    return str(value)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the scalar leaves (and estimates) of ``node``; lists are left out of the tables."""
    if is_estimate(node) or not isinstance(node, dict):
        return {} if isinstance(node, list) else {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def headline_metrics(per_model: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers per model of one suite that go into a manifest (the full report is ``eval.json``):
    every estimate's value (a win rate with its interval too), the held-out losses and the answers' mean length,
    as ``<model>/<dotted metric>``."""
    found = {}
    for key, values in per_model.items():
        for name, value in flatten(values).items():
            if is_estimate(value):
                found[f"{key}/{name}"] = value["value"]
                if name == "win_rate":
                    found.update({f"{key}/{name}.low": value["ci_low"], f"{key}/{name}.high": value["ci_high"]})
            elif name in ("sft_loss", "perplexity", "pref_loss", "reward_margin", "mean_output_words",
                          "mean_reference_words"):
                found[f"{key}/{name}"] = value
    return found


def suite_table(per_model: Mapping[str, Any], models: Sequence[str]) -> str:
    """One markdown table: a row per metric, a column per model."""
    flat = {model: flatten(per_model.get(model, {})) for model in models}
    metrics: list[str] = []
    for values in flat.values():
        metrics += [key for key in values if key not in metrics]
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for metric in metrics:
        cells = [format_value(flat[m][metric]) if metric in flat[m] else "-" for m in models]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: Mapping[str, Any]) -> str:
    """``eval.md``: models, settings (judge, template, seeds, sampling) and one table per suite."""
    models = list(report["models"])
    parts = ["# Evaluation", "", "## Models", ""]
    parts += [f"- `{key}`: {info['path']} (fingerprint `{str(info.get('fingerprint', ''))[:16]}`)"
              for key, info in report["models"].items()]
    if report.get("warnings"):
        parts += ["", "## Warnings", ""] + [f"- **{warning}**" for warning in report["warnings"]]
    parts += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=2, default=str), "```"]
    for suite, per_model in report["results"].items():
        parts += ["", f"## {suite}", "", suite_table(per_model, models)]
    parts += ["", "Intervals are seeded percentile-bootstrap 95% confidence intervals.", ""]
    return "\n".join(parts)


def write_report(json_path: str | Path, markdown_path: str | Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` as JSON and as the Markdown of :func:`render_markdown`."""
    Path(json_path).write_text(json.dumps(report, indent=2, default=str))
    Path(markdown_path).write_text(render_markdown(report))
