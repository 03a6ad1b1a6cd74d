"""Where a run's inputs live, from its config: the run layout, the datasets and models the config names, the
round's policy and reference, and whether an invocation reads the embedded world."""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import StageInput
from pipeline.layout import RunLayout
from pipeline.rounds import policy_for_round, reference_for_round, resolve_ref
from stages.config.run_config import RunConfig
from stages.config.sections import DatasetSpec


def layout(run: RunConfig) -> RunLayout:
    """The directories of ``run`` (its embedded world may live in another run: ``world_dir``; its caches may be
    shared with other runs: ``cache_dir``)."""
    return RunLayout.of(run.run_dir, run.world_dir or None, run.cache_dir or None)


def dataset_path(run: RunConfig, spec: DatasetSpec) -> str:
    """A file/directory/Hub id for ``spec``; ``world:<split>`` maps into the world's artifact and
    ``round:<stage>/<file>`` / ``prev:<stage>/<file>`` into this or the previous round's artifact."""
    split = spec.world_split
    if split is None:
        return resolve_ref(spec.path, layout(run), run.round)
    return str(layout(run).world_split(split))


def model_path(run: RunConfig) -> str:
    """The base model: the world's pretrained model, the converted directory of a ``gguf:`` model, or
    ``model.name_or_path``."""
    if run.model.is_world:
        return str(layout(run).world_model())
    if run.model.gguf_spec is not None:
        from alignment.models.gguf_cache import provision_gguf_model
        from alignment.models.gguf_files import resolve_gguf

        return str(provision_gguf_model(resolve_gguf(run.model.gguf_spec), progress=run.stage.progress))
    return run.model.name_or_path


def policy_input(run: RunConfig) -> StageInput:
    """The policy of ``run.round``: the base model in round 0, else the previous round's trained model
    (identified by its artifact, so its weights are never re-hashed)."""
    return policy_for_round(layout(run), run.round, model_path(run))


def policy_path(run: RunConfig) -> str:
    return policy_input(run).path


def reference_input(run: RunConfig, choice: str) -> StageInput | None:
    """The reference model for ``choice`` (``initial`` | ``previous`` | a path or artifact reference); None when
    it is the round's starting policy, which the trainer copies instead of loading twice."""
    return reference_for_round(choice, layout(run), run.round, model_path(run))


def reads_world(run: RunConfig, inputs: dict[str, StageInput]) -> bool:
    """Whether any of an invocation's inputs lies in the embedded world's artifact."""
    world = layout(run).world_artifact().resolve()
    return any(world == p or world in p.parents for p in (Path(i.path).resolve() for i in inputs.values()))
