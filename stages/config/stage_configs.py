"""One config dataclass per stage (``stage=<name>``) and the top-level :class:`RunConfig`.

A stage config lists in ``SECTIONS`` the top-level sections (or dotted keys) that change its result; those,
plus its own non-runtime fields, form the semantic config that is fingerprinted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from stages.config.errors import runtime
from stages.config.sections import (
    DataConfig,
    LossConfig,
    ModelConfig,
    ObjectiveConfig,
    TrackingConfig,
    WorldConfig,
    check_choice,
)


@dataclass
class StageConfig:
    """Base of every stage config."""

    SECTIONS: ClassVar[tuple[str, ...]] = ()
    name: str = MISSING
    log_every: int = runtime(10)
    progress: bool = runtime(True)

    def validate(self, run: RunConfig) -> list[str]:
        """Problems of this stage's own fields and of the sections it reads."""
        problems: list[str] = []
        for section in {s.split(".")[0] for s in self.SECTIONS}:
            node = getattr(run, section, None)
            if hasattr(node, "validate"):
                problems += node.validate()
        return problems


@dataclass
class PrepareConfig(StageConfig):
    """Materialise the embedded world: tokenizer, base model of ``model.size``, data splits."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("world", "model.size")
    name: str = "prepare"


@dataclass
class TrainSettings:
    """Optimisation settings shared by every training stage."""

    max_steps: int = 200
    sft_batch_size: int = 16
    pref_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    schedule: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    eval_every: int = 50
    eval_max_rows: int = 256
    save_every: int = 50
    keep_checkpoints: int = runtime(2)

    def validate(self, prefix: str = "stage") -> list[str]:
        problems: list[str] = []
        for key in ("max_steps", "sft_batch_size", "pref_batch_size", "grad_accum", "eval_every", "save_every"):
            if getattr(self, key) < 1:
                problems.append(f"{prefix}.{key} must be >= 1 (got {getattr(self, key)})")
        if self.lr <= 0:
            problems.append(f"{prefix}.lr must be > 0 (got {self.lr})")
        check_choice(problems, f"{prefix}.schedule", self.schedule, ("cosine", "linear", "constant"))
        check_choice(problems, f"{prefix}.precision", self.precision, ("fp32", "bf16"))
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"{prefix}.warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        return problems


@dataclass
class JointTrainConfig(StageConfig):
    """Joint SFT + preference training (ALRIGHT, MAXRIGHT, mix, sequential, single objective)."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data", "objective", "loss", "seed")
    name: str = "joint_train"
    train: TrainSettings = field(default_factory=TrainSettings)
    reference: str = "initial"
    save_merged: bool = False
    early_stop_eps: float | None = None
    ref_pareto: list[list[float]] = field(default_factory=list)
    strategy: str = runtime("auto")
    zero_stage: int = runtime(2)
    offload: bool = runtime(False)
    num_threads: int = runtime(0)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run) + self.train.validate("stage.train")
        if self.reference not in ("initial",) and not self.reference:
            problems.append("stage.reference must be 'initial' or a model path")
        check_choice(problems, "stage.strategy", self.strategy, ("auto", "ddp", "deepspeed"))
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append(f"stage.zero_stage must be 0..3 (got {self.zero_stage})")
        if any(len(point) != 2 for point in self.ref_pareto):
            problems.append("stage.ref_pareto must be a list of [sft_loss, pref_loss] pairs")
        return problems


@dataclass
class CreateInstructionsConfig(StageConfig):
    """Self-instruct (or the world's generator) producing fresh prompts."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data.prompts", "seed")
    name: str = "create_instructions"
    n_instructions: int = 200


@dataclass
class GenerateConfig(StageConfig):
    """Sample responses from the current policy."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data.prompts", "seed")
    name: str = "generate"
    backend: str = runtime("auto")
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 32


@dataclass
class RankConfig(StageConfig):
    """Score responses and build preference pairs."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("seed",)
    name: str = "rank"
    ranker: str = "verifier"
    pair_rule: str = "best_vs_worst"
    min_margin: float = 0.0


@dataclass
class FilterConfig(StageConfig):
    """Bilevel data selection against a golden set."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data", "loss", "seed")
    name: str = "filter"
    keep_fraction: float = 0.7


@dataclass
class EvaluateConfig(StageConfig):
    """Standalone evaluation of one or more models."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data", "seed")
    name: str = "evaluate"
    models: list[str] = field(default_factory=list)


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "prepare": PrepareConfig,
    "create_instructions": CreateInstructionsConfig,
    "generate": GenerateConfig,
    "rank": RankConfig,
    "filter": FilterConfig,
    "joint_train": JointTrainConfig,
    "evaluate": EvaluateConfig,
}


@dataclass
class RunConfig:
    """The whole resolved configuration of one ``alignment_run`` invocation."""

    stage: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run_dir: str = "runs/default"
    round: int = 0
    seed: int = 0
    force: bool = False
    dry_run: bool = False

    def validate(self) -> list[str]:
        """Every problem of the chosen stage and the sections it reads."""
        problems: list[str] = []
        if self.round < 0:
            problems.append(f"round must be >= 0 (got {self.round})")
        if not self.run_dir:
            problems.append("run_dir is empty")
        return problems + self.stage.validate(self) + self.tracking.validate()
