"""``stage=evaluate``: compare ``stage.models`` on ``stage.suites`` and write ``eval.json``, ``eval.md`` and plots.

Models: ``base`` (the run's base model), ``policy`` (the round's starting policy), a stage artifact such as
``round_00/joint_train`` or ``round:joint_train`` (this round's; relative to the run directory or absolute; its
``model/`` is evaluated), a model or LoRA adapter directory, or a Hub id. Every model
generates with the same sampling settings and seed; generations are cached under
``{run_dir}/cache/evaluate/<suite>/<model-key>.jsonl`` keyed by model fingerprint + prompts + sampling, so
re-judging never regenerates. Copies land in the artifact (``generations/``, ``alpaca_eval/``, ``mt_bench/``).

The win-rate judge is pinned: ``eval.json`` records its fingerprint (the runner's ``judge`` input), dtype,
encoding or template, truncation limits and seeds, and warns when the judge is the model that ranked the
training pairs of this run's rounds up to the evaluated one
(:func:`stages.builders.ranking.circular_judge_warnings`).
``stage.win_rate_baseline`` makes another model's answers to the same instructions the references.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.artifacts import StageInput, is_complete
from pipeline.layout import EVALUATE_CACHE, Files, trained_model
from pipeline.protocol import StageContext, StageResult
from pipeline.rounds import resolve_ref
from stages.builders.data import heldout_batches, heldout_examples
from stages.builders.generation import backend_options, model_source, sampling_settings
from stages.builders.paths import dataset_path, layout, model_path, policy_input
from stages.builders.ranking import (
    MODEL_RANKERS,
    circular_judge_warnings,
    create_ranker,
    judge_report,
    ranker_model_input,
)
from stages.config.run_config import RunConfig

STAGE_VERSION = 1
DISTRIBUTED = False
node_worker = None
GENERATION_SUITES = ("win_rate", "mt_bench", "verifier")
JUDGE_INPUT, BASELINE_INPUT = "judge", "win_rate_baseline"


# --- models ---------------------------------------------------------------------------------------------------


def model_key(spec: str) -> str:
    """A short file-name-safe key of a model spec: its last two path parts (``round_00/joint_train`` ->
    ``round_00_joint_train``), plus a hash of the whole spec when it had more parts (long absolute paths)."""
    from alignment.hashing import content_hash

    parts = [part for part in spec.strip().split("/") if part]
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts[-2:])).strip("._") or "model"
    return f"{key}-{content_hash(spec, n_chars=6)}" if len(parts) > 2 else key


def resolve_model(run: RunConfig, spec: str) -> dict[str, str]:
    """``{"spec", "path" (what is loaded), "input" (what identifies it)}`` of one model spec."""
    path = input_path = resolve_ref(spec, layout(run), run.round)
    if spec == "base":
        path = input_path = model_path(run)
    elif spec == "policy":
        path, input_path = policy_input(run).path, policy_input(run).source
    else:
        for candidate in (Path(run.run_dir) / path, Path(path)):
            if candidate.is_dir() and is_complete(candidate):  # a stage artifact: evaluate its model
                path, input_path = str(trained_model(candidate)), str(candidate)
                break
    return {"spec": spec, "path": path, "input": input_path}


def resolve_models(run: RunConfig) -> dict[str, dict[str, str]]:
    """``key -> resolve_model(spec)`` for every ``stage.models``."""
    models: dict[str, dict[str, str]] = {}
    for spec in run.stage.models:
        key = model_key(spec)
        while key in models:
            key += "_"
        models[key] = resolve_model(run, spec)
    return models


def resolve_baseline(run: RunConfig) -> dict[str, str] | None:
    """``stage.win_rate_baseline``: the model whose answers are the win-rate references (None: the file's)."""
    spec = run.stage.win_rate_baseline
    return {**resolve_model(run, spec), "key": f"baseline_{model_key(spec)}"} if spec else None


def inputs(run: RunConfig) -> dict[str, StageInput]:
    found = {f"model:{key}": StageInput(info["path"], info["input"]) for key, info in resolve_models(run).items()}
    stage = run.stage
    baseline = resolve_baseline(run)
    if "win_rate" in stage.suites and baseline is not None:
        found[BASELINE_INPUT] = StageInput(baseline["path"], baseline["input"])
    if "preference" in stage.suites:
        found["reference_model"] = StageInput(model_path(run))
    optional = {"reference_outputs": ("win_rate", stage.reference_outputs), "mmlu": ("mmlu", stage.mmlu_path),
                "mt_bench": ("mt_bench", stage.mt_bench_path)}
    for name, (suite, path) in optional.items():
        if suite in stage.suites:
            found[name] = StageInput(path)
    if "verifier" in stage.suites and run.data.eval_tasks.world_split is not None:
        found["data.eval_tasks"] = StageInput(dataset_path(run, run.data.eval_tasks))
    if "win_rate" in stage.suites or ("mt_bench" in stage.suites and stage.mt_bench_judge):
        found[JUDGE_INPUT] = ranker_model_input(run) if stage.ranker in MODEL_RANKERS else StageInput(stage.judge_model)
    return found


# --- config -> library values ---------------------------------------------------------------------------------


def settings_report(run: RunConfig) -> dict[str, Any]:
    """What makes the comparison fair and repeatable: seeds, sampling, judge, data sources, sample limits."""
    stage = run.stage
    return {"seed": run.seed, "suites": list(stage.suites), "sampling": sampling_settings(stage, run.seed).to_dict(),
            "generation_template": "the tokenizer's chat template (add_generation_prompt=True)",
            "mmlu_template": "MMLU: subject header, k dev shots, lettered options, 'Answer:' + log-likelihood of ' X'",
            "mmlu_shots": list(stage.mmlu_shots) if "mmlu" in stage.suites else [],
            "bootstrap": {"resamples": stage.bootstrap_resamples, "confidence": 0.95, "seed": run.seed},
            "judge": judge_report(run), "loss": {"name": run.loss.name, "beta": run.loss.beta},
            "win_rate_baseline": stage.win_rate_baseline or "the reference_outputs file's outputs",
            "data": {"sft_eval": run.data.sft_eval.path, "preference_eval": run.data.preference_eval.path,
                     "eval_tasks": run.data.eval_tasks.path, "reference_outputs": stage.reference_outputs,
                     "mmlu": stage.mmlu_path, "mt_bench": stage.mt_bench_path},
            "limits": {"max_instructions": stage.max_instructions, "mmlu_max_rows": stage.mmlu_max_rows,
                       "mt_bench_max_questions": stage.mt_bench_max_questions,
                       "sft_eval_max_rows": run.data.sft_eval.max_rows,
                       "preference_eval_max_rows": run.data.preference_eval.max_rows}}


def dry_run(run: RunConfig, stage_inputs: dict[str, str]) -> dict[str, Any]:
    identities = {name: item.source for name, item in inputs(run).items()}
    report = {"inputs": identities, "models": resolve_models(run), "settings": settings_report(run)}
    print(f"[evaluate] dry run: {json.dumps(report, default=str)}")
    return report


def run(run: RunConfig, ctx: StageContext) -> StageResult:
    from alignment.evaluation.report import headline_metrics, write_report

    models = resolve_models(run)
    report: dict[str, Any] = {
        "models": {key: {**info, "fingerprint": ctx.fingerprints[f"model:{key}"]} for key, info in models.items()},
        "settings": settings_report(run), "results": {}, "warnings": []}
    if JUDGE_INPUT in ctx.fingerprints:
        report["settings"]["judge"]["fingerprint"] = ctx.fingerprints[JUDGE_INPUT]
        report["warnings"] += circular_judge_warnings(run, ctx.fingerprints[JUDGE_INPUT])
    baseline = resolve_baseline(run) if BASELINE_INPUT in ctx.fingerprints else None
    if baseline is not None:
        baseline["fingerprint"] = ctx.fingerprints[BASELINE_INPUT]
        report["settings"]["win_rate_baseline"] = baseline
    for warning in report["warnings"]:
        print(f"[evaluate] WARNING: {warning}")
    reference_fingerprint = ctx.fingerprints.get("reference_model", "")
    suites: dict[str, Suite] = {**SUITES, "win_rate": partial(suite_win_rate, baseline=baseline),
                                "preference": partial(suite_preference, reference_fingerprint=reference_fingerprint)}
    outputs: set[str] = set()
    for suite in run.stage.suites:
        print(f"[evaluate] suite {suite} on {len(models)} model(s)")
        results, written = suites[suite](run, ctx.work_dir, report["models"])
        report["results"][suite] = results
        outputs.update(written)
    outputs.update(write_plots(report, ctx.work_dir))
    write_report(ctx.work_dir / Files.EVAL_JSON, ctx.work_dir / Files.EVAL_MARKDOWN, report)
    outputs.update((Files.EVAL_JSON, Files.EVAL_MARKDOWN))
    metrics = {f"{suite}/{key}": value for suite, per_model in report["results"].items()
               for key, value in headline_metrics(per_model).items()}
    return StageResult(outputs=sorted(outputs), metrics=metrics)


# --- suites: (run, work_dir, models) -> (results per model key, files written) ----------------------------------

Results = tuple[dict[str, Any], list[str]]
Suite = Callable[[RunConfig, Path, dict[str, Any]], Results]


def _cache_file(run: RunConfig, suite: str, key: str) -> Path:
    return layout(run).cache_dir(EVALUATE_CACHE) / suite / f"{key}.jsonl"


def _generator(run: RunConfig, info: dict[str, str]) -> Any:
    from alignment.evaluation.suites import Generator

    return Generator(model_source(run, info["path"]), info["fingerprint"], run.stage.backend,
                     backend_options(run, run.stage.device), sampling_settings(run.stage, run.seed))


def suite_sft_loss(run: RunConfig, work_dir: Path, models: dict[str, Any]) -> Results:
    from alignment.evaluation.heldout import heldout_sft

    def evaluate(model: Any, tokenizer: Any) -> dict[str, Any]:
        rows = heldout_examples(run, tokenizer, "sft")
        return heldout_sft(model, heldout_batches(rows, tokenizer, "sft", run.stage.eval_batch_size), run.stage.progress)

    return {key: with_scoring(run, info, evaluate) for key, info in models.items()}, []


def suite_preference(run: RunConfig, work_dir: Path, models: dict[str, Any], reference_fingerprint: str = ""
                     ) -> Results:
    """Held-out preference loss against the base model as reference; with ``stage.ref_cache`` its log-probs come
    from (and go to) the run's reference store, shared with training (``reference_fingerprint`` names it)."""
    from alignment.evaluation.heldout import heldout_preference
    from alignment.evaluation.suites import scoring_device
    from alignment.generation.sources import load_hf_model
    from alignment.train.components import model_reference
    from stages.builders.training import preference_component, stored_reference

    base = load_hf_model(model_source(run, model_path(run)), dtype=run.model.dtype)
    reference = model_reference(base.to(scoring_device(run.stage.device)))

    def evaluate(model: Any, tokenizer: Any) -> dict[str, Any]:
        pairs = heldout_examples(run, tokenizer, "preference")
        cache = stored_reference(run, reference_fingerprint, tokenizer, reference, pairs, writer="evaluate"
                                 ) if run.stage.ref_cache else None
        component = preference_component(run, cache or reference, tokenizer)
        batches = heldout_batches(pairs, tokenizer, "preference", run.stage.eval_batch_size)
        result = heldout_preference(model, batches, component, run.stage.bootstrap_resamples, run.seed,
                                    run.stage.progress)
        return {**result, "reference_cache": cache.report()} if cache else result

    results = {key: with_scoring(run, info, evaluate) for key, info in models.items()}
    return results, []


def suite_win_rate(run: RunConfig, work_dir: Path, models: dict[str, Any],
                   baseline: dict[str, str] | None = None) -> Results:
    """Each model's answers against references judged by ``stage.ranker``: the reference file's outputs, or the
    answers of the baseline model (``baseline``: ``resolve_baseline`` with its fingerprint) to the same
    instructions."""
    from alignment.evaluation.suites import alpaca_eval_rows, single_turn_outputs
    from alignment.evaluation.win_rate import (
        Matchup,
        alpaca_eval_metrics,
        annotation_rows,
        judge_matchups,
        model_outputs_rows,
        presentation_orders,
        win_rate_summary,
    )
    from alignment.hashing import content_hash

    stage = run.stage
    rows = alpaca_eval_rows(stage.reference_outputs, stage.max_instructions)
    prompts = [(content_hash({"instruction": r["instruction"]}), r["instruction"]) for r in rows]
    outputs: dict[str, list[str]] = {}
    results: dict[str, Any] = {}
    for key, info in [*models.items(), *([(baseline["key"], baseline)] if baseline else [])]:
        generated, reused = single_turn_outputs(_generator(run, info), prompts, _cache_file(run, "win_rate", key),
                                                stage.max_prompt_tokens, stage.progress)
        outputs[key] = [row["responses"][0] for row in generated]
        results[key] = {"generations_reused": reused}
    if baseline:  # the baseline model's answers replace the file's outputs
        rows = [{**row, "output": text, "generator": baseline["key"]}
                for row, text in zip(rows, outputs[baseline["key"]], strict=True)]
        results.pop(baseline["key"])
    references = [row["output"] for row in rows]
    written = []
    with create_ranker(run) as ranker:
        annotator = f"{ranker.name}:{stage.ranker_model or stage.judge_model}"
        for key in models:
            matchups = [Matchup(key=p[0], instruction=r["instruction"], output=out, reference=r["output"],
                                reference_generator=str(r.get("generator", "reference")),
                                dataset=str(r.get("dataset", ""))) for p, r, out in zip(prompts, rows, outputs[key],
                                                                                        strict=True)]
            wins, unscored = judge_matchups(ranker, matchups)
            annotations = annotation_rows(matchups, wins, key, annotator)
            folder = work_dir / Files.ALPACA_EVAL / key
            folder.mkdir(parents=True, exist_ok=True)
            (folder / Files.MODEL_OUTPUTS).write_text(json.dumps(model_outputs_rows(matchups, key), indent=2))
            (folder / Files.ANNOTATIONS).write_text(json.dumps(annotations, indent=2))
            results[key].update(win_rate_summary(wins, outputs[key], stage.bootstrap_resamples, run.seed,
                                                 references), unscored_judgements=unscored,
                                alpaca_eval=alpaca_eval_metrics(annotations))
            written.append(Files.ALPACA_EVAL)
        judge = {**ranker.describe(), "orders": len(presentation_orders(ranker)), "counts": ranker.counters()}
    for key in models:
        results[key]["judge"] = judge
    return results, sorted(set(written))


def suite_mmlu(run: RunConfig, work_dir: Path, models: dict[str, Any]) -> Results:
    from alignment.data.tokenize import encode_text
    from alignment.evaluation.mmlu import check_mmlu_row, mmlu_accuracy
    from alignment.evaluation.suites import read_records

    stage, folder = run.stage, Path(run.stage.mmlu_path)
    test = [check_mmlu_row(r, f"{folder / 'test.jsonl'} row {i}")
            for i, r in enumerate(read_records(folder / "test.jsonl"), start=1)][: stage.mmlu_max_rows or None]
    dev = [check_mmlu_row(r, f"{folder / 'dev.jsonl'} row {i}")
           for i, r in enumerate(read_records(folder / "dev.jsonl"), start=1)]

    def evaluate(model: Any, tokenizer: Any) -> dict[str, Any]:
        return {f"{shots}_shot": mmlu_accuracy(model, lambda text: encode_text(tokenizer, text), test, dev, shots,
                                               tokenizer.bos_token_id, stage.bootstrap_resamples, run.seed,
                                               stage.max_prompt_tokens, stage.progress)
                for shots in stage.mmlu_shots}

    return {key: with_scoring(run, info, evaluate) for key, info in models.items()}, []


def with_scoring(run: RunConfig, info: dict[str, str], work: Any) -> Any:
    from alignment.evaluation.suites import with_scoring_model

    return with_scoring_model(model_source(run, info["path"]), run.model.dtype, work, run.stage.device)


def suite_mt_bench(run: RunConfig, work_dir: Path, models: dict[str, Any]) -> Results:
    from alignment.data.readers import write_jsonl
    from alignment.evaluation.mt_bench import check_question, turn_lengths
    from alignment.evaluation.suites import mt_bench_outputs, read_records

    path = Path(run.stage.mt_bench_path) / "question.jsonl"
    questions = [check_question(r, f"{path} row {i}") for i, r in enumerate(read_records(path), start=1)]
    questions = questions[: run.stage.mt_bench_max_questions or None]
    results: dict[str, Any] = {}
    (work_dir / Files.MT_BENCH).mkdir(exist_ok=True)
    for key, info in models.items():
        answers, reused = mt_bench_outputs(_generator(run, info), questions, key, _cache_file(run, "mt_bench", key))
        write_jsonl(work_dir / Files.MT_BENCH / f"{key}.jsonl", answers)
        results[key] = {"questions": len(answers), "generations_reused": reused, **turn_lengths(answers)}
        results[key]["judge"] = _judge_mt_bench(run, questions, answers) if run.stage.mt_bench_judge else "not judged"
    return results, [Files.MT_BENCH]


def _judge_mt_bench(run: RunConfig, questions: list[Any], answers: list[Any]) -> dict[str, Any]:
    from alignment.evaluation.mt_bench import judge_groups, judged_summary

    groups = judge_groups(questions, answers)
    with create_ranker(run) as judge:
        scores = [scored.scores[0] for scored in judge.score_groups(groups)]
        return {**judged_summary(groups, scores, run.stage.bootstrap_resamples, run.seed), "judge": judge.describe()}


def suite_verifier(run: RunConfig, work_dir: Path, models: dict[str, Any]) -> Results:
    from alignment.data.readers import read_jsonl
    from alignment.evaluation.suites import single_turn_outputs
    from alignment.world.verifier import verifier_scores

    if run.data.eval_tasks.world_split is None:
        raise ValueError("suite verifier needs data.eval_tasks to be an embedded-world split (world:<split>)")
    tasks = list(read_jsonl(dataset_path(run, run.data.eval_tasks)))[: run.data.eval_tasks.max_rows or None]
    prompts = [(f"task{index}", task["prompt"]) for index, task in enumerate(tasks)]
    results: dict[str, Any] = {}
    for key, info in models.items():
        rows, reused = single_turn_outputs(_generator(run, info), prompts, _cache_file(run, "verifier", key),
                                           run.stage.max_prompt_tokens, run.stage.progress)
        scores = verifier_scores(tasks, [row["responses"][0] for row in rows], run.stage.bootstrap_resamples, run.seed)
        results[key] = {**scores, "tasks": len(tasks), "generations_reused": reused}
    return results, []


SUITES: dict[str, Suite] = {"sft_loss": suite_sft_loss, "preference": suite_preference,
                            "win_rate": suite_win_rate, "mmlu": suite_mmlu, "mt_bench": suite_mt_bench,
                            "verifier": suite_verifier}


# --- plots and headline metrics -------------------------------------------------------------------------------


def _estimates(report: dict[str, Any], suite: str, *path: str) -> dict[str, Any]:
    found = {}
    for key, values in report["results"].get(suite, {}).items():
        for part in path:
            values = values.get(part, {}) if isinstance(values, dict) else {}
        if isinstance(values, dict) and "value" in values:
            found[key] = values
    return found


def write_plots(report: dict[str, Any], work_dir: Path) -> list[str]:
    """Win rate and accuracies per model with CIs, and the output-length distribution of the win-rate suite."""
    from alignment.evaluation.plots import plot_estimates, plot_length_distribution

    plots: dict[str, tuple[tuple[str, ...], str, float | None]] = {"win_rate.png": (("win_rate", "win_rate"), "win rate vs reference", 0.5),
             "verifier_accuracy.png": (("verifier", "accuracy"), "verifier accuracy", None),
             "reward_accuracy.png": (("preference", "reward_accuracy"), "implicit-reward accuracy", None)}
    for shots in report["settings"].get("mmlu_shots", []):
        plots[f"mmlu_{shots}_shot.png"] = (("mmlu", f"{shots}_shot", "accuracy"), f"MMLU {shots}-shot", 0.25)
    written = []
    for name, (path, label, line) in plots.items():
        estimates = _estimates(report, *path)
        if estimates:
            plot_estimates(estimates, work_dir / name, label, reference_line=line)
            written.append(name)
    lengths = {}
    for key in report["models"]:
        outputs = work_dir / Files.ALPACA_EVAL / key / Files.MODEL_OUTPUTS
        if outputs.is_file():
            lengths[key] = [len(row["output"]) for row in json.loads(outputs.read_text())]
    if lengths:
        plot_length_distribution(lengths, work_dir / Files.OUTPUT_LENGTHS_PLOT)
        written.append(Files.OUTPUT_LENGTHS_PLOT)
    return written
