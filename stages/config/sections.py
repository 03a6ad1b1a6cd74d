"""Shared config sections: ``model``, ``data``, ``objective``, ``loss``, ``world``, ``tracking``.

Each section is a dataclass whose ``validate()`` returns a list of problems (empty when valid), so a stage can
report every problem at once. Fields built with :func:`runtime` are excluded from stage fingerprints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stages.config.checks import above, non_finite_problems
from stages.config.errors import runtime

WORLD_PREFIX = "world:"
GGUF_PREFIX = "gguf:"
OBJECTIVE_NAMES = ("sft", "preference", "sequential", "mix", "alright", "maxright")
COMPONENT_NAMES = ("sft", "preference", "kd")
DTYPES = ("float32", "bfloat16", "float16")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a filesystem path: absolute, relative with ./ ../ ~, or more than one '/'
    (a Hub id is 'name' or 'org/name')."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_choice(problems: list[str], key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r} is not one of {list(allowed)}")


@dataclass
class LoraSettings:
    """LoRA adapters (peft). ``target_modules=[all-linear]`` adapts every linear layer but the head."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def validate(self, prefix: str = "model.lora") -> list[str]:
        problems = non_finite_problems(self, prefix)
        above(problems, prefix, self, ("r", "alpha"))
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"{prefix}.dropout must be in [0, 1) (got {self.dropout})")
        if not self.target_modules:
            problems.append(f"{prefix}.target_modules must name at least one module (or all-linear)")
        return problems


@dataclass
class ModelConfig:
    """The policy to start from: ``name_or_path`` is ``world`` (the embedded world's base model of ``size``), a
    local directory, a Hub id, or ``gguf:<file.gguf or package/file.gguf>`` (converted once into a plain
    Hugging Face directory cached by the file's sha256; ``model=smollm2``)."""

    name_or_path: str = "world"
    size: str = "tiny"
    dtype: str = "float32"
    # auto: flash_attention_2 when flash-attn is installed on a CUDA machine (and no prefix sharing), else sdpa
    attn_implementation: str = "auto"
    trust_remote_code: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def is_world(self) -> bool:
        return self.name_or_path == "world"

    @property
    def gguf_spec(self) -> str | None:
        """The GGUF file of a ``gguf:`` model (a path, or ``package/file`` inside an installed package)."""
        return self.name_or_path[len(GGUF_PREFIX):] if self.name_or_path.startswith(GGUF_PREFIX) else None

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not self.name_or_path:
            problems.append("model.name_or_path is empty (use 'world', a local directory or a Hub id)")
        elif self.gguf_spec is not None:
            from alignment.models.gguf_files import resolve_gguf

            try:
                resolve_gguf(self.gguf_spec)
            except (OSError, ValueError) as error:
                problems.append(f"model.name_or_path: {error}")
        elif not self.is_world and looks_like_path(self.name_or_path) and not Path(self.name_or_path).exists():
            problems.append(f"model.name_or_path={self.name_or_path!r}: no such directory (and not a Hub id, "
                            "which looks like 'org/name')")
        if self.is_world:
            check_choice(problems, "model.size", self.size, ("tiny", "small"))
        check_choice(problems, "model.dtype", self.dtype, DTYPES)
        check_choice(problems, "model.attn_implementation", self.attn_implementation,
                     ("auto", "sdpa", "eager", "flash_attention_2"))
        return problems + self.lora.validate()


@dataclass
class DatasetSpec:
    """One dataset: ``world:<split>``, a jsonl/json/parquet file, a saved ``datasets`` directory or a Hub id."""

    path: str = ""
    split: str | None = None
    max_rows: int | None = None

    @property
    def world_split(self) -> str | None:
        return self.path[len(WORLD_PREFIX):] if self.path.startswith(WORLD_PREFIX) else None

    def validate(self, key: str) -> list[str]:
        problems = []
        if self.max_rows is not None and self.max_rows <= 0:
            problems.append(f"{key}.max_rows must be > 0 or null (got {self.max_rows})")
        return problems


def _world(split: str) -> DatasetSpec:
    return DatasetSpec(path=WORLD_PREFIX + split)


@dataclass
class DataConfig:
    """Datasets of a run and how they are tokenized. Defaults read the embedded world."""

    sft: DatasetSpec = field(default_factory=lambda: _world("sft_train"))
    preference: DatasetSpec = field(default_factory=lambda: _world("pref_train"))
    sft_eval: DatasetSpec = field(default_factory=lambda: _world("sft_eval"))
    preference_eval: DatasetSpec = field(default_factory=lambda: _world("pref_eval"))
    golden: DatasetSpec = field(default_factory=lambda: _world("golden"))
    candidates: DatasetSpec = field(default_factory=lambda: _world("candidates"))
    prompts: DatasetSpec = field(default_factory=lambda: _world("prompts"))
    eval_tasks: DatasetSpec = field(default_factory=lambda: _world("eval_tasks"))
    max_length: int = 256
    truncation: str = "keep_end"
    on_bad_row: str = "error"
    duplicates: str = "keep"  # keep | drop: rows with the same id (duplicates are counted either way)

    def specs(self) -> dict[str, DatasetSpec]:
        """Every dataset slot by name."""
        names = ("sft", "preference", "sft_eval", "preference_eval", "golden", "candidates", "prompts",
                 "eval_tasks")
        return {name: getattr(self, name) for name in names}

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.max_length < 8:
            problems.append(f"data.max_length must be >= 8 (got {self.max_length})")
        check_choice(problems, "data.truncation", self.truncation, ("keep_start", "keep_end"))
        check_choice(problems, "data.on_bad_row", self.on_bad_row, ("error", "skip"))
        check_choice(problems, "data.duplicates", self.duplicates, ("keep", "drop"))
        for name, spec in self.specs().items():
            problems += spec.validate(f"data.{name}")
        return problems


@dataclass
class ObjectiveConfig:
    """How the objectives are combined per optimizer step (``objective=<name>``).

    ``lambd`` is the preference weight λ of the papers, whatever order ``objectives`` lists them in (the weight
    of ``kd`` when there is no preference objective): ALRIGHT trains the preference objective with probability
    λ, mix minimises (1-λ)·f_other + λ·f_pref, MAXRIGHT weighs the gaps with (1-λ, λ). ``sequential`` trains
    ``objectives[0]`` then ``objectives[1]`` (``reverse`` swaps). MAXRIGHT's optima f* are keyed by objective:
    ``sft_opt``, ``dpo_opt`` (the preference objective), ``kd_opt``, or read from the manifests of
    single-objective runs named in ``optima_from``.
    """

    name: str = "alright"
    lambd: float = 0.5
    objectives: list[str] = field(default_factory=lambda: ["sft", "preference"])
    # sequential: train objectives[0] then objectives[1] (reverse=true swaps), splitting one budget
    reverse: bool = False
    split_fraction: float = 0.5
    split_unit: str = "steps"
    # maxright: refresh both stale losses every K steps; optima f* from config or from single-objective runs
    refresh_every: int = 10
    sft_opt: float | None = None
    dpo_opt: float | None = None
    kd_opt: float | None = None
    optima_from: list[str] = field(default_factory=list)
    teacher: str = ""

    def validate(self) -> list[str]:
        problems = non_finite_problems(self, "objective")
        check_choice(problems, "objective.name", self.name, OBJECTIVE_NAMES)
        if not 0.0 <= self.lambd <= 1.0:
            problems.append(f"objective.lambd must be in [0, 1] (got {self.lambd})")
        if len(self.objectives) != 2 or len(set(self.objectives)) != 2:
            problems.append(f"objective.objectives must name two different objectives (got {self.objectives})")
        if self.name in ("sft", "preference") and self.name not in self.objectives:
            problems.append(f"objective={self.name} trains the {self.name!r} objective, which is not in "
                            f"objective.objectives {self.objectives}")
        for name in self.objectives:
            check_choice(problems, "objective.objectives[]", name, COMPONENT_NAMES)
        if "kd" in self.objectives and not self.teacher:
            problems.append("objective.teacher must name the teacher model when an objective is 'kd'")
        if not 0.0 < self.split_fraction < 1.0:
            problems.append(f"objective.split_fraction must be in (0, 1) (got {self.split_fraction})")
        check_choice(problems, "objective.split_unit", self.split_unit, ("steps", "epochs"))
        if self.refresh_every < 1:
            problems.append(f"objective.refresh_every must be >= 1 (got {self.refresh_every})")
        return problems


@dataclass
class LossConfig:
    """The preference loss (``loss=<name>``) and its parameters; names follow alignment.losses.LossType."""

    name: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.0
    alpha: float = 0.0
    aipo_lambda: float = 0.0
    nll_weight: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def validate(self) -> list[str]:
        from alignment.losses import LossType

        try:
            loss_type = LossType(self.name)
        except ValueError:
            return [f"loss.name={self.name!r} is not one of {[t.value for t in LossType]}"]
        return [f"loss.{p}" for p in self.params().validate(loss_type)]

    def params(self) -> Any:
        """The hyper-parameters as :class:`alignment.losses.LossParams` (every field but ``name``)."""
        from alignment.losses import LossParams

        return LossParams(**{k: v for k, v in vars(self).items() if k != "name"})


@dataclass
class WorldConfig:
    """The embedded task world built by ``stage=prepare``: data sizes, tokenizer, base-model pretraining."""

    seed: int = 1234
    sft_train: int = 1500
    sft_eval: int = 150
    pref_train: int = 1500
    pref_eval: int = 150
    golden: int = 100
    candidates: int = 600
    prompts: int = 500
    eval_per_family: int = 60
    corrupt_fraction: float = 0.3
    # noise kind of the corrupted candidates: mismatch (another family's answer; the default because it is the
    # noise filters meant for scraped data remove, and the tiny base model can see it) | near_miss (a plausible
    # wrong answer: the tiny model cannot tell it from the truth, filter AUROC ~0.58) | mixed (half each);
    # see alignment.world.splits.WorldSizes
    corruption: str = "mismatch"
    vocab_size: int = 1024
    pretrain_steps: int = 300
    pretrain_batch_size: int = 32
    pretrain_lr: float = 1e-3
    pretrain_correct_fraction: float = 0.5

    def sizes(self) -> Any:
        """The split sizes and noise as :class:`alignment.world.sizes.WorldSizes` (the one conversion)."""
        from alignment.world.sizes import WorldSizes

        return WorldSizes(**{f.name: getattr(self, f.name) for f in fields(WorldSizes)})

    def validate(self) -> list[str]:
        from alignment.world.sizes import WorldSizes, size_problems

        problems = non_finite_problems(self, "world")
        problems += [f"world.{p}" for p in size_problems({f.name: getattr(self, f.name) for f in fields(WorldSizes)})]
        if not 0.0 <= self.pretrain_correct_fraction <= 1.0:
            problems.append("world.pretrain_correct_fraction must be in [0, 1]")
        for key in ("vocab_size", "pretrain_steps", "pretrain_batch_size"):
            if getattr(self, key) < 1:
                problems.append(f"world.{key} must be >= 1 (got {getattr(self, key)})")
        above(problems, "world", self, ("pretrain_lr",))
        return problems


@dataclass
class TrackingConfig:
    """Optional experiment trackers (through accelerate). Keys such as WANDB_API_KEY come from the environment."""

    backends: list[str] = runtime(default_factory=list)
    project: str = runtime("alignment")

    def validate(self) -> list[str]:
        problems: list[str] = []
        for name in self.backends:
            check_choice(problems, "tracking.backends[]", name, ("tensorboard", "wandb", "mlflow"))
        return problems
