"""The ranker a stage config names (``stage.ranker`` of ``rank`` and of ``evaluate``'s win rates)."""

from __future__ import annotations

from typing import Any

from stages.builders.generation import model_source
from stages.builders.paths import policy_input, policy_path
from stages.config.run_config import RunConfig


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

        return PairRMRanker(stage.ranker_model, stage.batch_size, stage.device, stage.ranker_dtype,
                            stage.source_max_tokens, stage.candidate_max_tokens, run.seed)
    if stage.ranker == "reward_model":
        from alignment.ranking.reward_model import RewardModelRanker

        return RewardModelRanker(stage.ranker_model, stage.batch_size, stage.device, stage.ranker_dtype,
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
