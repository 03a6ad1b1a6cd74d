"""Round wiring of the iterative loop, in one place: which model each round starts from, which reference it
uses, and how a config names another stage's artifact of the same run.

Round ``k`` starts from round ``k-1``'s ``joint_train`` model (the base model in round 0). The reference of a
preference loss is an explicit choice: ``initial`` (the run's base model, fixed across rounds, as in
RLHFlow's iterative DPO), ``previous`` (the round's starting policy, as in AIPO and self-rewarding loops) or a
model path. Configs refer to artifacts of the same run with ``round:<stage>[/<file>]`` (this round) and
``prev:<stage>[/<file>]`` (the previous round), e.g. ``data.preference.path=round:rank/pairs.jsonl``; only
this module turns those into paths, so neither bash nor YAML ever builds one. Where a config names a model, a
bare training reference (``round:train_rm``, ``prev:joint_train``), a complete artifact directory that holds a
``model/`` and that ``model/`` directory itself all name the same model, identified by its artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts import StageInput, is_complete
from pipeline.layout import JOINT_TRAIN, TRAIN_RM, Files, RunLayout, trained_model

REFERENCE_CHOICES = ("initial", "previous")
TRAINING_STAGES = (JOINT_TRAIN, TRAIN_RM)  # stages whose artifact hands on a model (``model/``)
THIS_ROUND, PREVIOUS_ROUND = "round:", "prev:"


@dataclass(frozen=True)
class ArtifactRef:
    """A reference to ``{run_dir}/round_{k}/{stage}/{file}`` relative to the current round."""

    round_offset: int  # 0: this round, -1: the previous one
    stage: str
    file: str

    def path(self, layout: RunLayout, round_index: int) -> Path:
        """The referenced path; a clear error for ``prev:`` in round 0."""
        target = round_index + self.round_offset
        if target < 0:
            raise ValueError(f"'{PREVIOUS_ROUND}{self.stage}' has no previous round in round {round_index}")
        directory = layout.stage_dir(target, self.stage)
        return directory / self.file if self.file else directory


def parse_artifact_ref(text: str) -> ArtifactRef | None:
    """``round:rank/pairs.jsonl`` -> ArtifactRef(0, "rank", "pairs.jsonl"); None for anything else."""
    for prefix, offset in ((THIS_ROUND, 0), (PREVIOUS_ROUND, -1)):
        if text.startswith(prefix):
            stage, _, file = text[len(prefix):].partition("/")
            if not stage:
                raise ValueError(f"{text!r} names no stage (expected {prefix}<stage>[/<file>])")
            return ArtifactRef(offset, stage, file)
    return None


def resolve_ref(text: str, layout: RunLayout, round_index: int) -> str:
    """``text`` itself, or the path an artifact reference names."""
    ref = parse_artifact_ref(text)
    return text if ref is None else str(ref.path(layout, round_index))


def policy_for_round(layout: RunLayout, round_index: int, base_model: str) -> StageInput:
    """The model round ``round_index`` starts from: the base model in round 0, else the previous round's trained
    model, identified by its complete ``joint_train`` artifact (whose manifest fingerprint stands for it)."""
    if round_index == 0:
        return StageInput(base_model)
    artifact = layout.stage_dir(round_index - 1, JOINT_TRAIN)
    return StageInput(str(trained_model(artifact)), str(artifact) if is_complete(artifact) else "")


def reference_for_round(choice: str, layout: RunLayout, round_index: int, base_model: str) -> StageInput | None:
    """The reference model for ``choice``, or None when it is the round's starting policy itself (which
    the trainer then copies, or reaches by disabling LoRA adapters, instead of loading it twice)."""
    if choice == "previous" or (choice == "initial" and round_index == 0):
        return None
    if choice == "initial":
        return StageInput(base_model)
    return resolve_model_ref(choice, layout, round_index)


def resolve_model_ref(text: str, layout: RunLayout, round_index: int) -> StageInput:
    """Like :func:`resolve_ref`, but a bare training reference (``prev:joint_train``, ``round:train_rm``) names
    its model, and so does a complete artifact directory or its ``model/`` (see :func:`model_of_artifact`)."""
    ref = parse_artifact_ref(text)
    if ref is not None and ref.stage in TRAINING_STAGES and not ref.file:
        artifact = ref.path(layout, round_index)
        return StageInput(str(trained_model(artifact)), str(artifact) if is_complete(artifact) else "")
    path = resolve_ref(text, layout, round_index)
    return model_of_artifact(path) or StageInput(path)


def model_of_artifact(path: str | Path) -> StageInput | None:
    """The model of a complete artifact named by its directory (its :func:`trained_model`) or by its ``model/``
    or ``model/merged`` directory (loaded as named), identified by the artifact so that both spellings have
    the same fingerprint; None when ``path`` is neither."""
    candidate = Path(path)
    if is_complete(candidate) and (candidate / Files.MODEL).is_dir():
        return StageInput(str(trained_model(candidate)), str(candidate))
    for artifact in (candidate.parent, candidate.parent.parent):
        model = artifact / Files.MODEL
        if candidate in (model, model / Files.MERGED) and candidate.is_dir() and is_complete(artifact):
            return StageInput(str(candidate), str(artifact))
    return None
