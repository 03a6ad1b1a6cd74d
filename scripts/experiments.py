"""Helpers shared by the experiment scripts (tradeoff.py, filter_eval.py, iterate_demo.py): each step is a stage
run under the artifact contract, so re-running a script skips what is complete and resumes what is partial."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.layout import EVALUATE, Files, stage_dir
from stages.compose import compose_run
from stages.runner import run_stage


def say(message: str, tag: str = "experiment") -> None:
    print(f"[{tag}] {message}", flush=True)


@dataclass(frozen=True)
class Judging:
    """How a model's answers are judged: a reward model against reference answers, plus MMLU zero-shot."""

    judge: str
    instructions: int = 100
    max_new_tokens: int = 256
    mmlu: str = "../shared/data/mmlu"
    mmlu_rows: int = 300

    def overrides(self, references: str) -> list[str]:
        return ["stage.ranker=reward_model", f"stage.ranker_model={self.judge}",
                f"stage.reference_outputs={references}", f"stage.max_instructions={self.instructions}",
                f"stage.mmlu_path={self.mmlu}", "stage.mmlu_shots=[0]", f"stage.mmlu_max_rows={self.mmlu_rows}",
                f"stage.max_new_tokens={self.max_new_tokens}", "stage.backend=vllm"]


def evaluate(run_dir: Path, model: str, common: list[str], suites: list[str], judging: Judging | None = None,
             references: str = "") -> dict[str, Any]:
    """One evaluate artifact for ``model`` in ``run_dir``: its ``eval.json`` results of that model, its key, and
    the path of its answers (``model_outputs.json``, usable as references by another evaluation)."""
    judged = judging.overrides(references) if judging and ("win_rate" in suites or "mmlu" in suites) else []
    run = compose_run("stage=evaluate", f"run_dir={run_dir}", *common, f"stage.models=[{model}]",
                      f"stage.suites=[{','.join(suites)}]", *judged)
    say(f"evaluating {model} ({', '.join(suites)}) in {run_dir}")
    run_stage(run)
    artifact = stage_dir(run_dir, 0, EVALUATE)
    report = json.loads((artifact / Files.EVAL_JSON).read_text())
    (key,) = report["models"]
    return {"results": {suite: per_model[key] for suite, per_model in report["results"].items()}, "key": key,
            "answers": str(artifact / Files.ALPACA_EVAL / key / Files.MODEL_OUTPUTS)}


def win_rate_columns(judged: dict[str, Any] | None) -> dict[str, Any]:
    """Win rate with its CI, the answers' mean length in words, and MMLU accuracy, from :func:`evaluate`."""
    if judged is None:
        return {}
    win = judged["results"].get("win_rate", {})
    rate = win.get("win_rate") or {}
    mmlu = (judged["results"].get("mmlu", {}).get("0_shot", {}).get("accuracy") or {}).get("value")
    matched = (win.get("length_matched") or {}).get("win_rate") or {}
    return {"win_rate": rate.get("value"), "win_low": rate.get("ci_low"), "win_high": rate.get("ci_high"),
            "win_len_matched": matched.get("value"), "words": win.get("mean_output_words"),
            "ref_words": win.get("mean_reference_words"), "mmlu": mmlu}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (columns: every key, in first-seen order; missing values shown as -)."""
    headers = list(dict.fromkeys(h for r in rows for h in r))
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(h)) for h in headers) + " |" for r in rows])
