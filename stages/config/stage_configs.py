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
            validate = getattr(getattr(run, section, None), "validate", None)
            if validate is not None:
                problems += validate()
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
    verifier_eval: bool = runtime(True)

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
class GenerationRuntimeFields:
    """Backend knobs shared by the stages that generate (runtime: they do not change what is computed).

    ``backend``: auto (vLLM when it imports and starts, else hf) | vllm | hf. ``batch_size``: prompts per hf
    ``generate`` call. vLLM: ``tensor_parallel_size``, ``max_model_len``, ``kv_cache_gb`` (CPU KV cache),
    ``gpu_memory_utilization``, ``enforce_eager``. ``lora_mode``: how a LoRA policy is served by vLLM
    (auto | vllm | merge).
    """

    backend: str = runtime("auto")
    batch_size: int = runtime(16)
    tensor_parallel_size: int = runtime(1)
    max_model_len: int | None = runtime(None)
    kv_cache_gb: float | None = runtime(None)
    gpu_memory_utilization: float = runtime(0.9)
    enforce_eager: bool = runtime(False)
    lora_mode: str = runtime("auto")

    def generation_problems(self) -> list[str]:
        problems: list[str] = []
        check_choice(problems, "stage.backend", self.backend, ("auto", "vllm", "hf"))
        check_choice(problems, "stage.lora_mode", self.lora_mode, ("auto", "vllm", "merge"))
        for key in ("batch_size", "tensor_parallel_size"):
            if getattr(self, key) < 1:
                problems.append(f"stage.{key} must be >= 1 (got {getattr(self, key)})")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            problems.append(f"stage.gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.kv_cache_gb is not None and self.kv_cache_gb <= 0:
            problems.append(f"stage.kv_cache_gb must be > 0 or null (got {self.kv_cache_gb})")
        return problems


def sampling_problems(stage: Any) -> list[str]:
    """Problems of a stage's n / temperature / top_p / top_k / max_new_tokens / stop fields."""
    problems: list[str] = []
    if stage.n < 1:
        problems.append(f"stage.n must be >= 1 (got {stage.n})")
    if stage.temperature < 0:
        problems.append(f"stage.temperature must be >= 0 (0 = greedy; got {stage.temperature})")
    if not 0.0 < stage.top_p <= 1.0:
        problems.append(f"stage.top_p must be in (0, 1] (got {stage.top_p})")
    if stage.top_k < -1:
        problems.append(f"stage.top_k must be -1/0 (off) or >= 1 (got {stage.top_k})")
    if stage.max_new_tokens < 1:
        problems.append(f"stage.max_new_tokens must be >= 1 (got {stage.max_new_tokens})")
    if any(not s for s in stage.stop):
        problems.append("stage.stop must not contain empty strings")
    return problems


@dataclass
class CreateInstructionsConfig(GenerationRuntimeFields, StageConfig):
    """Fresh prompts for this round: the world's generator (``source=world``) or self-instruct with the policy.

    self_instruct: few-shot "Come up with a series of tasks:" requests mixing ``seed_shots`` seed and
    ``machine_shots`` generated instructions from ``seed_pool`` (a seed_tasks.jsonl-style file or any prompt
    rows; "" = ``data.prompts``), post-filters (``min_words``..``max_words``, ``banned_keywords``, "Write a
    program", punctuation/non-ASCII starts), ROUGE-L de-duplication at ``rouge_threshold``; ``n_clusters`` > 0
    generates ``cluster_oversample`` x more and keeps a TF-IDF k-means-diverse subset.
    """

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data.prompts", "seed")
    name: str = "create_instructions"
    n_instructions: int = 200
    source: str = "world"
    seed_pool: str = ""
    include_seeds: bool = False
    seed_shots: int = 6
    machine_shots: int = 2
    requests_per_round: int = 16
    max_rounds: int = 50
    rouge_threshold: float = 0.7
    min_words: int = 4
    max_words: int = 150
    banned_keywords: list[str] = field(default_factory=lambda: [
        "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
        "plot", "go to", "video", "audio", "music", "flowchart", "diagram"])
    prompt_format: str = "chat"
    n_clusters: int = 0
    cluster_oversample: float = 2.0
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run) + self.generation_problems() + sampling_problems(self)
        check_choice(problems, "stage.source", self.source, ("world", "self_instruct"))
        check_choice(problems, "stage.prompt_format", self.prompt_format, ("chat", "raw"))
        for key in ("n_instructions", "requests_per_round", "max_rounds", "seed_shots", "max_words"):
            if getattr(self, key) < 1:
                problems.append(f"stage.{key} must be >= 1 (got {getattr(self, key)})")
        for key in ("machine_shots", "n_clusters"):
            if getattr(self, key) < 0:
                problems.append(f"stage.{key} must be >= 0 (got {getattr(self, key)})")
        if not 0.0 < self.rouge_threshold <= 1.0:
            problems.append(f"stage.rouge_threshold must be in (0, 1] (got {self.rouge_threshold})")
        if not 0 <= self.min_words <= self.max_words:
            problems.append(f"stage.min_words must be in [0, max_words] (got {self.min_words})")
        if self.cluster_oversample < 1.0:
            problems.append(f"stage.cluster_oversample must be >= 1 (got {self.cluster_oversample})")
        return problems


@dataclass
class GenerateConfig(GenerationRuntimeFields, StageConfig):
    """Sample ``n`` responses per prompt from the current policy (``policy_path``: the base model in round 0).

    Prompts: ``prompts_from`` = create_instructions (this round's artifact), data (``data.prompts``) or auto
    (the artifact when it is complete, else ``data.prompts``). ``max_prompts`` keeps the first prompts;
    prompts longer than ``max_prompt_tokens`` are skipped and counted. ``temperature=0`` is greedy; ``top_k``
    -1/0 is off; ``stop`` strings end a response. Work is split in shards of ``shard_size`` prompts (resumable,
    spread over RANK/WORLD_SIZE or NODE_RANK/NNODES workers; rank 0 waits up to ``shard_wait_timeout_s``).
    """

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data.prompts", "seed")
    name: str = "generate"
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    prompts_from: str = "auto"
    max_prompts: int | None = None
    max_prompt_tokens: int = 512
    shard_size: int = runtime(256)
    shard_wait_timeout_s: float = runtime(7200.0)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run) + self.generation_problems() + sampling_problems(self)
        check_choice(problems, "stage.prompts_from", self.prompts_from, ("auto", "create_instructions", "data"))
        if self.max_prompts is not None and self.max_prompts < 1:
            problems.append(f"stage.max_prompts must be >= 1 or null (got {self.max_prompts})")
        for key in ("max_prompt_tokens", "shard_size"):
            if getattr(self, key) < 1:
                problems.append(f"stage.{key} must be >= 1 (got {getattr(self, key)})")
        return problems


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
    world_dir: str = ""  # run directory holding the embedded world (round_00/prepare); empty: run_dir itself
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
