"""Where a run's inputs live: the embedded world's artifact and the datasets/models a config names."""

from __future__ import annotations

from pathlib import Path

from alignment.artifacts import stage_dir
from alignment.rounds import TRAINED_MODEL_DIR, policy_for_round, reference_for_round, resolve_ref
from stages.config.sections import DatasetSpec
from stages.config.stage_configs import RunConfig

WORLD_DATA_DIR = "world"
WORLD_MODEL_DIR = "model"
__all__ = ["TRAINED_MODEL_DIR", "dataset_path", "model_path", "policy_path", "prepare_dir", "reference_path",
           "uses_world"]


def prepare_dir(run: RunConfig) -> Path:
    """The embedded world's artifact: shared by every round of a run (and by runs naming it in ``world_dir``)."""
    return stage_dir(run.world_dir or run.run_dir, 0, "prepare")


def uses_world(run: RunConfig) -> bool:
    """Whether this invocation reads anything from the embedded world's artifact."""
    if run.stage.name == "prepare":
        return False
    return run.model.is_world or any(spec.world_split for spec in run.data.specs().values())


def dataset_path(run: RunConfig, spec: DatasetSpec) -> str:
    """A file/directory/Hub id for ``spec``; ``world:<split>`` maps into the prepare artifact and
    ``round:<stage>/<file>`` / ``prev:<stage>/<file>`` into this or the previous round's artifact."""
    split = spec.world_split
    if split is None:
        return resolve_ref(spec.path, run.run_dir, run.round)
    return str(prepare_dir(run) / WORLD_DATA_DIR / f"{split}.jsonl")


def model_path(run: RunConfig) -> str:
    """The base model: the world's pretrained model or ``model.name_or_path``."""
    if run.model.is_world:
        return str(prepare_dir(run) / WORLD_MODEL_DIR)
    return run.model.name_or_path


def policy_path(run: RunConfig) -> str:
    """The policy of ``run.round``: the base model in round 0, else the previous round's trained model."""
    return policy_for_round(run.run_dir, run.round, model_path(run))


def reference_path(run: RunConfig, choice: str) -> str | None:
    """The reference model for ``choice`` (``initial`` | ``previous`` | a path or artifact reference); None when
    it is the round's starting policy, which the trainer copies instead of loading twice."""
    return reference_for_round(choice, run.run_dir, run.round, model_path(run))
