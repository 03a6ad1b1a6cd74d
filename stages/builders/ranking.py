"""The ranker a stage config names (``stage.ranker`` of ``rank`` and of ``evaluate``'s win rates), what an
evaluation records about its judge, and the check that a judge did not also rank the training pairs."""

from __future__ import annotations

from typing import Any

from pipeline.artifacts import StageInput, is_complete, read_manifest
from pipeline.layout import RANK
from pipeline.rounds import resolve_model_ref
from stages.builders.generation import model_source
from stages.builders.paths import layout, policy_input, policy_path
from stages.config.run_config import RunConfig

MODEL_RANKERS = ("pairrm", "reward_model")  # rankers that load ``stage.ranker_model``
RANKER_INPUTS = ("ranker_model", "judge")  # the inputs of a rank manifest that name the model that ranked


def ranker_model_input(run: RunConfig) -> StageInput:
    """``stage.ranker_model`` as loaded: a directory or Hub id as given; a ``train_rm`` (or any training)
    artifact directory, its ``model/``, or a ``round:train_rm``/``prev:train_rm`` reference -> the artifact's
    model, identified by the artifact (the same fingerprint however it is named)."""
    return resolve_model_ref(run.stage.ranker_model, layout(run), run.round)


def judge_model(run: RunConfig) -> str:
    """The LLM judge: ``stage.judge_model`` or this round's policy."""
    return str(run.stage.judge_model or policy_path(run))


def judge_identity(run: RunConfig) -> str:
    """What identifies the judge for a fingerprint: ``stage.judge_model`` or the round's policy artifact."""
    return str(run.stage.judge_model or policy_input(run).source)


def create_ranker(run: RunConfig) -> Any:
    """The ranker ``stage.ranker`` names, configured from the stage."""
    stage = run.stage
    if stage.ranker == "verifier":
        from alignment.world.ranker import VerifierRanker

        return VerifierRanker()
    if stage.ranker == "pairrm":
        from alignment.ranking.pairrm import PairRMRanker

        return PairRMRanker(ranker_model_input(run).path, stage.batch_size, stage.device, stage.ranker_dtype,
                            stage.source_max_tokens, stage.candidate_max_tokens, run.seed)
    if stage.ranker == "reward_model":
        from alignment.ranking.reward_model import RewardModelRanker

        return RewardModelRanker(ranker_model_input(run).path, stage.batch_size, stage.device, stage.ranker_dtype,
                                 stage.reward_max_tokens)
    return _judge(run)


def _judge(run: RunConfig) -> Any:
    from alignment.generation.base import BackendOptions
    from alignment.generation.factory import create_backend
    from alignment.ranking.judge import JudgeRanker, judge_settings

    stage = run.stage
    options = BackendOptions(dtype=run.model.dtype, batch_size=stage.batch_size, seed=run.seed, device=stage.device)
    backend = create_backend(stage.backend, model_source(run, judge_model(run)), options).backend
    settings = judge_settings(stage.judge_samples, stage.judge_temperature, stage.judge_max_new_tokens, run.seed)
    return JudgeRanker(backend, settings, stage.judge_mode, stage.judge_max_prompt_tokens)


def judge_report(run: RunConfig) -> dict[str, Any]:
    """The judge of an evaluation as configured (before it loads): which model, dtype, encoding or template,
    truncation limits, seeds, how presentation orders and ties are handled."""
    stage = run.stage
    report: dict[str, Any] = {"ranker": stage.ranker, "ties": "half a win", "seed": run.seed}
    if stage.ranker in MODEL_RANKERS:
        report.update(model=stage.ranker_model, loaded=ranker_model_input(run).path, dtype=stage.ranker_dtype)
    if stage.ranker == "reward_model":
        report.update(encoding="training: chat template with the generation prompt, response, EOS",
                      max_tokens=stage.reward_max_tokens, orders="one (scores do not depend on the order)",
                      comparison="the higher reward wins")
    elif stage.ranker == "pairrm":
        report.update(source_max_tokens=stage.source_max_tokens, candidate_max_tokens=stage.candidate_max_tokens,
                      orders="both")
    else:
        from alignment.ranking.judge_prompts import PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE

        report.update(model=judge_model(run), dtype=run.model.dtype, mode=stage.judge_mode,
                      samples=stage.judge_samples, temperature=stage.judge_temperature,
                      max_new_tokens=stage.judge_max_new_tokens, max_prompt_tokens=stage.judge_max_prompt_tokens,
                      orders="both", template=PAIRWISE_TEMPLATE if stage.judge_mode == "pairwise"
                      else POINTWISE_TEMPLATE)
    return report


def circular_judge_rounds(run: RunConfig, judge_fingerprint: str) -> list[int]:
    """Rounds ``0..run.round`` whose complete ``rank`` artifact ranked with the model whose fingerprint is
    ``judge_fingerprint`` (its ``ranker_model`` or ``judge`` input in the manifest)."""
    rounds = []
    for round_index in range(run.round + 1):
        directory = layout(run).stage_dir(round_index, RANK)
        if not is_complete(directory):
            continue
        recorded = read_manifest(directory).get("inputs", {})
        if any(recorded.get(name, {}).get("fingerprint") == judge_fingerprint for name in RANKER_INPUTS):
            rounds.append(round_index)
    return rounds


def circular_judge_warnings(run: RunConfig, judge_fingerprint: str) -> list[str]:
    """A warning when the judge is the model that ranked the training pairs of this run's rounds up to the
    evaluated one: the policies were trained towards that judge's preferences, so it favours them."""
    rounds = circular_judge_rounds(run, judge_fingerprint)
    if not rounds:
        return []
    return [f"circular judge: the judge ({run.stage.ranker}, fingerprint {judge_fingerprint[:12]}) is the model "
            f"that ranked the training pairs of round(s) {rounds} of this run (their rank manifests); the "
            "evaluated models were trained towards its preferences, so its win rates overstate them. Judge with "
            "a model trained on other data (e.g. stage=train_rm stage.data_half=second)"]
