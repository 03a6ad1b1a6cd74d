"""Trade-off between SFT and preference learning: single objectives, sequential (both orders), mix, ALRIGHT and
MAXRIGHT on equal optimizer-step budgets, plus linear weight interpolation of the two single-objective models.

    .venv/bin/python scripts/tradeoff.py                                   # embedded world, tiny model
    .venv/bin/python scripts/tradeoff.py --model smollm2 --data hh_alpaca --judge runs/rm-judge/round_00/train_rm

Every method gets the same steps, batch sizes, seed and reference (the base model) from the same base. Every run
is an artifact under ``--run-dir`` (a re-run skips complete runs and resumes a partial one), and all of them
share one cache (reference log-probs, evaluation generations). With ``--judge`` (a reward model directory or
train_rm artifact), each point is also evaluated: win rate of its answers to ``--instructions`` AlpacaEval
instructions against the SFT-only model's answers (judged by the reward model), MMLU zero-shot, and for the
interpolated models the held-out losses (trained points report their own final held-out evaluation). With
``--heldout-rows N`` every point and the base model are evaluated again on the first N rows of both held-out sets
(training's ``--eval-rows`` evaluations stay as they were: no run retrains), and those losses give the table, the
distances and the plot.

Distances to the ideal point (f*_SFT, f*_pref) are in the normalised loss space: each loss as
(f − f*) / (f_base − f*), so the base model sits at (1, 1) and the ideal point at (0, 0). Writes
``tradeoff.md``, ``tradeoff.json``, ``tradeoff.png`` (loss space) and ``winrate_time.png`` into the run directory.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from experiments import Judging, evaluate, say, table, win_rate_columns

from alignment.evaluation.plots import plot_loss_space, plt, save_figure
from alignment.train.metrics_log import read_metrics
from pipeline.layout import JOINT_TRAIN, Files, stage_dir, trained_model
from stages.compose import compose_run
from stages.runner import run_stage

METHODS = ("sequential", "reverse", "mix", "alright", "maxright")  # reverse: preference -> SFT
REAL_MODEL = {"smollm2": ["model=smollm2", "model.lora.enabled=true"]}
TRAIN_REAL_MODEL = ["stage.save_merged=true"]  # a training-stage key: the evaluate runs must not get it


def train(root: Path, name: str, common: list[str], *overrides: str) -> dict[str, Any]:
    """One joint_train artifact (skipped when complete, resumed when partial); its metrics and eval history."""
    run_dir = root / name
    say(f"training {name}", "tradeoff")
    metrics = dict(run_stage(compose_run("stage=joint_train", f"run_dir={run_dir}", *common, *overrides))["metrics"])
    log = read_metrics(stage_dir(run_dir, 0, JOINT_TRAIN) / Files.LOGS / Files.METRICS)
    steps = [r for r in log if "train/step_seconds" in r]
    per_objective: dict[str, list[float]] = {}
    for record in steps:
        per_objective.setdefault(str(int(record["train/objective"])), []).append(record["train/step_seconds"])
    return {"metrics": metrics, "evals": [r for r in log if "eval/sft_loss" in r],
            "step_seconds": {k: statistics.mean(v) for k, v in per_objective.items()},
            "objective_steps": {k: len(v) for k, v in per_objective.items()},
            "refresh_extra_seconds": refresh_extra_seconds(steps), "refresh_overhead": refresh_overhead(steps)}


def is_refresh_step(record: dict[str, Any]) -> bool:
    """Whether a logged training step ran a MAXRIGHT refresh (it logs the refreshed losses)."""
    return any(key.startswith("train/refresh_") for key in record)


def median_plain_seconds(steps: list[dict[str, Any]]) -> float | None:
    """The run's median step time without a refresh; None when every step refreshed."""
    plain = [r["train/step_seconds"] for r in steps if not is_refresh_step(r)]
    return statistics.median(plain) if plain else None


def refresh_extra_seconds(steps: list[dict[str, Any]]) -> list[float]:
    """MAXRIGHT: how much longer each step with a refresh took than the run's median step without one, in step
    order (the first step also holds the warm-up). Drift between runs barely touches this within-run measure."""
    median = median_plain_seconds(steps)
    if median is None:
        return []
    return [r["train/step_seconds"] - median for r in steps if is_refresh_step(r)]


def refresh_overhead(steps: list[dict[str, Any]]) -> float | None:
    """MAXRIGHT: the refresh steps' extra seconds as a share of the run's time had every step taken its median
    plain (refresh-free) step's time. Both come from one run, so neither run order nor machine drift moves it."""
    extra, median = refresh_extra_seconds(steps), median_plain_seconds(steps)
    if not extra or median is None:
        return None
    return sum(extra) / (median * len(steps))


def normalised_distance(point: tuple[float, float], ideal: tuple[float, float], base: tuple[float, float]
                        ) -> float | None:
    """Distance to the ideal point with each loss scaled by its base-to-optimum range; None when a range is not
    positive: the single-objective run never beat the base model on its own held-out loss (the optimum is the
    base's step-0 evaluation), so that axis has no scale and any division would only measure noise."""
    if undefined_axes(ideal, base):
        return None
    return math.hypot(*((p - i) / (b - i) for p, i, b in zip(point, ideal, base, strict=True)))


def undefined_axes(ideal: tuple[float, float], base: tuple[float, float]) -> list[str]:
    """The objectives whose single-objective run ended no better than the base model (see normalised_distance)."""
    return [name for name, i, b in zip(("SFT", "preference"), ideal, base, strict=True) if b - i <= 0]


def sweep_best(results: dict[str, Any], final_losses: list[dict[str, float]]) -> tuple[float, float]:
    """The sweep's utopia point: the best held-out (SFT, preference) loss over every evaluation of every trained
    run (the base's step-0 evaluation included) and every final point. It is the paper's ideal point when the
    single-objective runs hold both minima, and stays defined when a short single-objective run ends no better
    than the base (another method's point may still beat it)."""
    points = [(e["eval/sft_loss"], e["eval/pref_loss"]) for r in results.values() for e in r["evals"]]
    points += [(losses["sft_loss"], losses["pref_loss"]) for losses in final_losses]
    return min(p[0] for p in points), min(p[1] for p in points)


Targets = tuple[tuple[float, float], tuple[float, float]]  # (ideal point, the sweep's utopia point)


def row(name: str, lambd: float | None, losses: dict[str, float], targets: Targets, base: tuple[float, float],
        trained: dict[str, Any] | None, judged: dict[str, Any] | None) -> dict[str, Any]:
    point = (losses["sft_loss"], losses["pref_loss"])
    out: dict[str, Any] = {
        "method": name, "lambda": lambd, "sft_loss": point[0], "pref_loss": point[1],
        "reward_acc": losses.get("reward_accuracy"), "margin": losses.get("reward_margin"),
        "dist_norm": normalised_distance(point, targets[0], base),
        "dist_utopia": normalised_distance(point, targets[1], base),
        "s_per_step": trained["metrics"]["seconds_per_step"] if trained else None,
        "train_s": trained["metrics"]["train_seconds"] if trained else 0.0,
    }
    out.update(win_rate_columns(judged))
    return out


def trained_losses(result: dict[str, Any]) -> dict[str, float]:
    final = result["evals"][-1]
    return {"sft_loss": final["eval/sft_loss"], "pref_loss": final["eval/pref_loss"],
            "reward_accuracy": final["eval/reward_accuracy"], "reward_margin": final["eval/reward_margin"]}


def judged_losses(judged: dict[str, Any]) -> dict[str, float]:
    sft, pref = judged["results"]["sft_loss"], judged["results"]["preference"]
    return {"sft_loss": sft["sft_loss"], "pref_loss": pref["pref_loss"],
            "reward_accuracy": pref["reward_accuracy"]["value"], "reward_margin": pref["reward_margin"]}


def cost_ratios(results: dict[str, dict[str, Any]], lambd: float) -> dict[str, float]:
    """Seconds per step of each method over what its own mix of SFT and preference steps costs at sequential's
    seconds per step of each objective (mix: per step, both objectives every step)."""
    if f"sequential-{lambd}" not in results:
        return {}
    sequential = results[f"sequential-{lambd}"]["step_seconds"]
    ratios = {}
    for method in ("alright", "maxright", "mix"):
        if f"{method}-{lambd}" not in results:  # left out with --methods
            continue
        result = results[f"{method}-{lambd}"]
        spent = sum(result["step_seconds"][k] * n for k, n in result["objective_steps"].items())
        expected = sum(sequential[k] * n for k, n in result["objective_steps"].items() if k in sequential)
        ratios[method] = spent / expected if method != "mix" else result["metrics"]["seconds_per_step"] / (
            statistics.mean(sequential.values()))
    return ratios


# One colour per method and one marker per λ (or α), so a plot of 20 points reads as methods × λ.
METHOD_COLOURS = {"only-sft": "black", "only-preference": "dimgrey", "sequential": "tab:blue", "reverse": "tab:cyan",
                  "mix": "tab:purple", "alright": "tab:red", "maxright": "tab:orange", "interpolate": "tab:green"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def point_label(method: str, lambd: float | None) -> str:
    """``alright λ=0.25``; interpolation is by α; single objectives have no λ."""
    return method if lambd is None else f"{method} {'α' if method == 'interpolate' else 'λ'}={lambd:g}"


def point_styles(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Plot style of every row's label: the method's colour and the marker of its λ's rank among the sweep's."""
    weights = sorted({r["lambda"] for r in rows if r["lambda"] is not None})
    styles = {}
    for r in rows:
        marker = "o" if r["lambda"] is None else MARKERS[weights.index(r["lambda"]) % len(MARKERS)]
        styles[point_label(r["method"], r["lambda"])] = {"color": METHOD_COLOURS.get(r["method"], "tab:brown"),
                                                         "marker": marker}
    return styles


def win_rate_points(rows: list[dict[str, Any]]) -> list[tuple[str, float, float, float, float]]:
    """(label, training minutes, win rate vs SFT-only answers, CI low, CI high) for every judged row. The SFT-only
    model sits at 0.5 by definition: its own judged rate is against the AlpacaEval references, another axis."""
    points = []
    for r in rows:
        if r.get("win_rate") is None:
            continue
        label = point_label(r["method"], r["lambda"])
        if r["method"] == "only-sft":
            points.append((label, r["train_s"] / 60, 0.5, 0.5, 0.5))
        else:
            points.append((label, r["train_s"] / 60, r["win_rate"], r["win_low"], r["win_high"]))
    return points


def plot_win_rate_vs_time(rows: list[dict[str, Any]], path: Path) -> None:
    """Win rate against SFT-only answers (95% CI as a bar) over training minutes, one point per judged model."""
    figure, axes = plt.subplots(figsize=(9.0, 4.8))
    styles = point_styles(rows)
    for label, minutes, rate, low, high in win_rate_points(rows):
        style = styles[label]
        axes.errorbar(minutes, rate, yerr=[[rate - low], [high - rate]], fmt=style["marker"], color=style["color"],
                      ecolor=style["color"], elinewidth=0.8, alpha=0.85, capsize=2, mec="black", ms=7,
                      label="only-sft (the reference: 0.5 by definition)" if label == "only-sft" else label)
    axes.axhline(0.5, color="grey", lw=0.8, ls="--")
    axes.set_xlabel("training time (min)")
    axes.set_ylabel("win rate vs SFT-only answers (95% CI)")
    axes.grid(alpha=0.3)
    if axes.containers:  # a loss-only sweep (no --judge) has no win rates: an empty plot without a legend
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    save_figure(figure, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/tradeoff", type=Path)
    parser.add_argument("--data", default="world", choices=["world", "hh_alpaca"])
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "smollm2"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=0, help="0: steps // 10")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="the two-objective methods to run at each λ (the single-objective runs always run); "
                             "cost ratios need sequential")
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.25, 0.5, 0.75],
                        help="weight interpolation: alpha·SFT-only + (1-alpha)·preference-only")
    parser.add_argument("--world", default="default", help="world config (ci for a quick check)")
    parser.add_argument("--judge", default="", help="reward model judging win rates; empty: losses only")
    parser.add_argument("--instructions", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--mmlu", default="../shared/data/mmlu")
    parser.add_argument("--mmlu-rows", type=int, default=300)
    parser.add_argument("--references", default="../shared/data/alpaca_eval/eval_set.jsonl",
                        help="instructions (and the SFT-only model's references) for the win rates")
    parser.add_argument("--max-length", type=int, default=0, help="data.max_length of training and evaluation")
    parser.add_argument("--eval-rows", type=int, default=0,
                        help="held-out rows of both sets, in training's evaluations and the evaluate stage's")
    parser.add_argument("--heldout-rows", type=int, default=0,
                        help="evaluate every point and the base on this many held-out rows of both sets (the "
                             "evaluate stage, reference log-probs from the sweep's store) and report those losses")
    parser.add_argument("--nll-weight", type=float, default=None,
                        help="loss.nll_weight for training and evaluation (default: the loss config's)")
    parser.add_argument("overrides", nargs="*", help="extra alignment_run overrides for every training run")
    return parser.parse_args()


def heldout_rows(n: int) -> list[str]:
    """Overrides keeping the first ``n`` rows of both held-out sets."""
    return [f"data.sft_eval.max_rows={n}", f"data.preference_eval.max_rows={n}"]


def main() -> None:
    args = parse_args()
    root = args.run_dir
    model = REAL_MODEL.get(args.model, [f"model={args.model}", f"world={args.world}", f"world_dir={root / 'world'}"])
    shared = [f"data={args.data}", *model, f"cache_dir={root / 'cache'}"]
    if args.nll_weight is not None:
        shared.append(f"loss.nll_weight={args.nll_weight}")
    if args.max_length:
        shared.append(f"data.max_length={args.max_length}")
    heldout_shared = [*shared, *heldout_rows(args.heldout_rows), "stage.ref_cache=true"]
    if args.eval_rows:  # the same rows for the trained points (training's last evaluation) and interpolated ones
        shared += heldout_rows(args.eval_rows)
    common = [*shared, f"stage.train.max_steps={args.steps}", *([f"stage.train.eval_max_rows={args.eval_rows}"]
                                                                   if args.eval_rows else []),
              f"stage.train.eval_every={args.eval_every or max(1, args.steps // 10)}", "stage.log_every=1",
              *(TRAIN_REAL_MODEL if args.model in REAL_MODEL else []), *args.overrides]
    results = {f"only-{name}": train(root, f"only-{name}", common, f"objective={name}") for name in ("sft", "preference")}
    ideal = (results["only-sft"]["metrics"]["eval/sft_loss_best"],
             results["only-preference"]["metrics"]["eval/pref_loss_best"])
    start = results["only-sft"]["evals"][0]
    base = (start["eval/sft_loss"], start["eval/pref_loss"])
    optima = f"objective.optima_from=[{stage_dir(root / 'only-sft', 0, JOINT_TRAIN)},"\
             f"{stage_dir(root / 'only-preference', 0, JOINT_TRAIN)}]"
    for lambd in args.lambdas:
        for method in args.methods:
            order = {"sequential": ["objective=sequential", f"objective.split_fraction={1 - lambd}"],
                     "reverse": ["objective=sequential", "objective.reverse=true", f"objective.split_fraction={lambd}"]}
            results[f"{method}-{lambd}"] = train(root, f"{method}-{lambd}", common, *order.get(
                method, [f"objective={method}"]), f"objective.lambd={lambd}", optima)
    sft_model, pref_model = (trained_model(stage_dir(root / f"only-{n}", 0, JOINT_TRAIN)) for n in ("sft", "preference"))
    points = {name: str(trained_model(stage_dir(root / name, 0, JOINT_TRAIN))) for name in results}
    for alpha in args.alphas:
        out = root / f"interpolate-{alpha}" / "model"
        if not out.is_dir():
            from alignment.models.interpolate import interpolate_models

            say(f"interpolating {alpha}·SFT-only + {1 - alpha:.2f}·preference-only", "tradeoff")
            interpolate_models(sft_model, pref_model, alpha, out)
        points[f"interpolate-{alpha}"] = str(out)
    judging = Judging(args.judge, args.instructions, args.max_new_tokens, args.mmlu, args.mmlu_rows)
    scored = ["win_rate", "mmlu"] if args.judge else []
    judged: dict[str, dict[str, Any]] = {}
    sft_answers = args.references
    if args.judge:
        judged["only-sft"] = evaluate(root / "eval-only-sft", points["only-sft"], shared, scored, judging,
                                      args.references)
        sft_answers = judged["only-sft"]["answers"]
    for name, path in points.items():
        loss_suites = ["sft_loss", "preference"] if name.startswith("interpolate") and not args.heldout_rows else []
        if name != "only-sft" and scored + loss_suites:
            judged[name] = evaluate(root / f"eval-{name}", path, shared, scored + loss_suites, judging, sft_answers)
    measured = {name: trained_losses(results[name]) if name in results else judged_losses(judged[name])
                for name in points if name in results or name in judged}
    utopia = sweep_best(results, list(measured.values()))
    paths = {name: result["evals"] for name, result in results.items()}
    if args.heldout_rows:
        measured, ideal, utopia, base, paths = heldout_points(root, points, heldout_shared)
    rows = []
    for name, losses in measured.items():
        method, _, lambd = name.rpartition("-")
        label = name if name.startswith("only") else method
        rows.append(row(label, None if name.startswith("only") else float(lambd), losses, (ideal, utopia), base,
                        results.get(name), judged.get(name)))
    report(root, args, rows, results, (ideal, utopia), base, paths)


def heldout_points(root: Path, points: dict[str, str], shared: list[str]) -> tuple[
        dict[str, dict[str, float]], tuple[float, float], tuple[float, float], tuple[float, float], dict[str, Any]]:
    """``--heldout-rows``: the base model and every point evaluated on the larger held-out sets, one evaluate
    artifact each (``heldout-<name>``). Returns the points' losses, the ideal point (each single-objective run's
    final loss, or the base's where the run ended no better), the utopia point (the best of every point and the
    base), the base, and each trained point's path (base → final) for the plot."""
    def losses(name: str, model: str) -> dict[str, float]:
        return judged_losses(evaluate(root / f"heldout-{name}", model, shared, ["sft_loss", "preference"]))

    start = losses("base", "base")
    measured = {name: losses(name, path) for name, path in points.items()}
    base = (start["sft_loss"], start["pref_loss"])
    ideal = (min(base[0], measured["only-sft"]["sft_loss"]), min(base[1], measured["only-preference"]["pref_loss"]))
    every = [base, *((m["sft_loss"], m["pref_loss"]) for m in measured.values())]
    utopia = (min(p[0] for p in every), min(p[1] for p in every))
    paths = {name: [{"eval/sft_loss": m["sft_loss"], "eval/pref_loss": m["pref_loss"]} for m in (start, found)]
             for name, found in measured.items() if not name.startswith("interpolate")}
    return measured, ideal, utopia, base, paths


def loss_space_points(rows: list[dict[str, Any]], paths: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """Each trained run's held-out evaluations along training (``paths``); an interpolated model is its one
    point."""
    points = {}
    for r in rows:
        name = r["method"] if r["lambda"] is None else f"{r['method']}-{r['lambda']}"
        points[point_label(r["method"], r["lambda"])] = paths.get(name) or [
            {"eval/sft_loss": r["sft_loss"], "eval/pref_loss": r["pref_loss"]}]
    return points


def report(root: Path, args: argparse.Namespace, rows: list[dict[str, Any]], results: dict[str, Any],
           targets: Targets, base: tuple[float, float], paths: dict[str, Any]) -> None:
    (ideal, utopia), text = targets, table(rows)
    ratios = {lambd: cost_ratios(results, lambd) for lambd in args.lambdas}
    lines = [f"ideal point (f*_SFT, f*_pref) = ({ideal[0]:.4f}, {ideal[1]:.4f}); base model ({base[0]:.4f}, "
             f"{base[1]:.4f}); {args.steps} optimizer steps per method; held-out losses on "
             f"{args.heldout_rows or args.eval_rows or 'all'} rows of each set",
             f"utopia point of the sweep (best held-out loss on each axis over every evaluation; dist_utopia) = "
             f"({utopia[0]:.4f}, {utopia[1]:.4f})", "", text, ""]
    for lambd, ratio in ratios.items():
        lines.append(f"λ={lambd}: time per step over sequential's, per objective step: "
                     + ", ".join(f"{m} {v:.3f}×" for m, v in ratio.items()))
        if f"maxright-{lambd}" in results:
            extra = results[f"maxright-{lambd}"]["refresh_extra_seconds"]
            lines.append(f"λ={lambd}: MAXRIGHT's refresh steps took " + ", ".join(f"{e:+.1f}" for e in extra)
                         + " s over its median step without a refresh")
            overhead = results[f"maxright-{lambd}"].get("refresh_overhead")
            if overhead is not None:
                lines.append(f"λ={lambd}: MAXRIGHT's refreshes add {overhead:+.1%} to {args.steps} of its median plain "
                             f"steps, within the run ({1 + overhead:.3f}× sequential at equal plain steps)")
    for name in undefined_axes(ideal, base):
        lines.append(f"the {name}-only run never beat the base model's held-out {name} loss: that axis has no "
                     "base-to-optimum range, so dist_norm is undefined (-) for every point; compare the raw losses")
    for method in METHODS:
        values = [r["dist_norm"] for r in rows if r["method"] == method and r["dist_norm"] is not None]
        if values:
            lines.append(f"mean normalised distance to the ideal point, {method}: {statistics.mean(values):.3f}")
    print("\n".join(lines), flush=True)
    (root / "tradeoff.md").write_text("\n".join(lines) + "\n")
    (root / "tradeoff.json").write_text(json.dumps({"ideal": ideal, "utopia": utopia, "base": base, "rows": rows,
                                                    "cost_ratios": ratios}, indent=1))
    plot_loss_space(loss_space_points(rows, paths), root / "tradeoff.png", ideal=ideal, styles=point_styles(rows),
                    title=f"{args.data}, {args.model}, {args.steps} steps per method")
    plot_win_rate_vs_time(rows, root / "winrate_time.png")


if __name__ == "__main__":
    main()
