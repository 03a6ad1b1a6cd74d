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
    lr: float = 1e-4
    schedule: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    eval_every: int = 50
    eval_max_rows: int = 256
    save_every: int = 50
    keep_checkpoints: int = runtime(2)
    # speed/memory: length-bucketed batches (sort inside shuffled windows of bucket_window batches; 1 = off),
    # cached reference log-probs (no reference model kept during training), prefix-shared preference forward
    bucket_window: int = 1
    ref_cache: bool = runtime(False)
    prefix_sharing: bool = runtime(False)

    def validate(self, prefix: str = "stage") -> list[str]:
        problems: list[str] = []
        for key in ("max_steps", "sft_batch_size", "pref_batch_size", "grad_accum", "eval_every", "save_every",
                    "bucket_window"):
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
    """Score this round's generated responses and build preference pairs (``pairs.jsonl``, ``ranked.jsonl``).

    ``ranker``: pairrm | reward_model (``ranker_model``: a directory or Hub id) | verifier (the embedded world)
    | judge (LLM-as-judge through the generation backends; ``judge_model`` "" = this round's policy).
    ``pair_rule``: best_vs_worst | best_vs_random | all_pairs | length_penalised (score - ``length_alpha`` x
    response tokens); pairs with a margin below ``min_margin`` and ties are dropped. PairRM input limits:
    ``source_max_tokens``/``candidate_max_tokens``; reward models: ``reward_max_tokens``. Judge: ``judge_mode``
    pointwise | pairwise, ``judge_samples`` samples per judgement at ``judge_temperature``. Runtime:
    ``batch_size`` (comparisons / responses per forward), ``shard_size`` (prompts per resumable shard),
    ``device``, ``backend`` (the judge's), ``shard_wait_timeout_s``.
    """

    SECTIONS: ClassVar[tuple[str, ...]] = ("seed",)
    name: str = "rank"
    ranker: str = "verifier"
    ranker_model: str = ""
    ranker_dtype: str = "float32"
    pair_rule: str = "best_vs_worst"
    min_margin: float = 0.0
    length_alpha: float = 0.0
    source_max_tokens: int = 1224
    candidate_max_tokens: int = 412
    reward_max_tokens: int = 2048
    judge_model: str = ""
    judge_mode: str = "pointwise"
    judge_samples: int = 3
    judge_temperature: float = 0.7
    judge_max_new_tokens: int = 96
    judge_max_prompt_tokens: int = 896
    batch_size: int = runtime(16)
    shard_size: int = runtime(256)
    device: str | None = runtime(None)
    backend: str = runtime("auto")
    shard_wait_timeout_s: float = runtime(7200.0)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run)
        check_choice(problems, "stage.ranker", self.ranker, ("pairrm", "reward_model", "verifier", "judge"))
        check_choice(problems, "stage.pair_rule", self.pair_rule,
                     ("best_vs_worst", "best_vs_random", "all_pairs", "length_penalised"))
        check_choice(problems, "stage.judge_mode", self.judge_mode, ("pointwise", "pairwise"))
        check_choice(problems, "stage.ranker_dtype", self.ranker_dtype, ("float32", "bfloat16", "float16"))
        check_choice(problems, "stage.backend", self.backend, ("auto", "vllm", "hf"))
        if self.ranker in ("pairrm", "reward_model") and not self.ranker_model:
            problems.append(f"stage.ranker_model must name a checkpoint (directory or Hub id) for "
                            f"stage.ranker={self.ranker}")
        for key in ("min_margin", "length_alpha", "judge_temperature"):
            if getattr(self, key) < 0:
                problems.append(f"stage.{key} must be >= 0 (got {getattr(self, key)})")
        for key in ("source_max_tokens", "candidate_max_tokens", "reward_max_tokens", "judge_samples",
                    "judge_max_new_tokens", "judge_max_prompt_tokens", "batch_size", "shard_size"):
            if getattr(self, key) < 1:
                problems.append(f"stage.{key} must be >= 1 (got {getattr(self, key)})")
        return problems


@dataclass
class FilterConfig(StageConfig):
    """Bilevel data selection of ``data.candidates`` against the golden set ``data.golden`` (REFERENCES §4.3).

    ``kind``: sft (per-example SFT loss) | preference (per-example ``loss.name`` loss). Penalty method: θ
    minimises ρ·L_gold + (1-ρ)·mean(w·ℓ); the selector also subtracts the value function through a proxy
    θ' trained on the weighted candidate loss (``value_function``; false = BiPOST/SEAL). ρ_e = max(rho_min,
    rho - e·rho_decay) per candidate epoch. ``epochs`` over the pool (``max_steps`` overrides). Keep rule:
    top_p (``keep_fraction`` of the rows with the largest weights) or threshold (weight >= ``threshold``).
    """

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data.golden", "data.candidates", "data.max_length",
                                           "data.truncation", "data.on_bad_row", "loss", "seed")
    name: str = "filter"
    kind: str = "sft"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 16
    golden_batch_size: int = 8
    lr: float = 1e-4
    proxy_lr: float | None = None
    selector_lr: float = 0.05
    selector_optimizer: str = "adam"
    activation: str = "softmax"
    rho: float = 0.9
    rho_decay: float = 0.1
    rho_min: float = 0.0
    value_function: bool = True
    max_grad_norm: float = 1.0
    keep_rule: str = "top_p"
    keep_fraction: float = 0.7
    threshold: float = 1.0
    reference: str = "initial"
    num_threads: int = runtime(0)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run)
        check_choice(problems, "stage.kind", self.kind, ("sft", "preference"))
        check_choice(problems, "stage.selector_optimizer", self.selector_optimizer, ("adam", "sgd"))
        check_choice(problems, "stage.activation", self.activation, ("softmax", "sigmoid"))
        check_choice(problems, "stage.keep_rule", self.keep_rule, ("top_p", "threshold"))
        for key in ("epochs", "batch_size", "golden_batch_size"):
            if getattr(self, key) < 1:
                problems.append(f"stage.{key} must be >= 1 (got {getattr(self, key)})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"stage.max_steps must be >= 1 or null (got {self.max_steps})")
        for key in ("lr", "selector_lr"):
            if getattr(self, key) <= 0:
                problems.append(f"stage.{key} must be > 0 (got {getattr(self, key)})")
        if self.proxy_lr is not None and self.proxy_lr <= 0:
            problems.append(f"stage.proxy_lr must be > 0 or null (got {self.proxy_lr})")
        for key in ("rho", "rho_min"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                problems.append(f"stage.{key} must be in [0, 1] (got {getattr(self, key)})")
        if self.rho_decay < 0:
            problems.append(f"stage.rho_decay must be >= 0 (got {self.rho_decay})")
        if not 0.0 < self.keep_fraction <= 1.0:
            problems.append(f"stage.keep_fraction must be in (0, 1] (got {self.keep_fraction})")
        return problems


EVALUATION_SUITES = ("sft_loss", "preference", "win_rate", "mmlu", "mt_bench", "verifier")


@dataclass
class EvaluateConfig(GenerationRuntimeFields, StageConfig):
    """Standalone evaluation of ``models`` (``base``, stage artifacts such as ``round_00/joint_train``, model
    directories, LoRA adapter directories or Hub ids) on ``suites``:

    ``sft_loss`` (``data.sft_eval``), ``preference`` (``data.preference_eval``, reference = the base model,
    loss = ``loss.*``), ``win_rate`` against ``reference_outputs`` (AlpacaEval jsonl/json: instruction, output,
    generator) judged by ``ranker`` (pairrm | reward_model with ``ranker_model``, judge with ``judge_model``),
    ``mmlu`` (``mmlu_path``: dev.jsonl + test.jsonl, ``mmlu_shots``), ``mt_bench`` (``mt_bench_path``:
    question.jsonl; ``mt_bench_judge`` scores answers with the pointwise judge) and ``verifier`` (the embedded world's ``data.eval_tasks``). Every model generates with the
    same sampling fields (greedy by default); ``*_max_*`` fields keep the first rows.
    """

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data", "loss", "seed")
    name: str = "evaluate"
    models: list[str] = field(default_factory=lambda: ["base"])
    suites: list[str] = field(default_factory=lambda: ["sft_loss", "preference", "verifier"])
    bootstrap_resamples: int = 1000
    reference_outputs: str = ""
    max_instructions: int | None = None
    ranker: str = "pairrm"
    ranker_model: str = ""
    ranker_dtype: str = "float32"
    source_max_tokens: int = 1224
    candidate_max_tokens: int = 412
    reward_max_tokens: int = 2048
    judge_model: str = ""
    judge_mode: str = "pairwise"
    judge_samples: int = 1
    judge_temperature: float = 0.0
    judge_max_new_tokens: int = 96
    judge_max_prompt_tokens: int = 896
    mmlu_path: str = ""
    mmlu_shots: list[int] = field(default_factory=lambda: [0, 5])
    mmlu_max_rows: int | None = None
    mt_bench_path: str = ""
    mt_bench_max_questions: int | None = None
    mt_bench_judge: bool = False
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    max_prompt_tokens: int = 1024
    eval_batch_size: int = runtime(8)
    device: str | None = runtime(None)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run) + self.generation_problems() + sampling_problems(self)
        if not self.models:
            problems.append("stage.models must name at least one model (base, an artifact, a directory or Hub id)")
        for suite in self.suites:
            check_choice(problems, "stage.suites", suite, EVALUATION_SUITES)
        check_choice(problems, "stage.ranker", self.ranker, ("pairrm", "reward_model", "judge"))
        check_choice(problems, "stage.judge_mode", self.judge_mode, ("pointwise", "pairwise"))
        check_choice(problems, "stage.ranker_dtype", self.ranker_dtype, ("float32", "bfloat16", "float16"))
        if self.n != 1:
            problems.append(f"stage.n must be 1 for evaluation (got {self.n})")
        needs = {"win_rate": ("reference_outputs",), "mmlu": ("mmlu_path",), "mt_bench": ("mt_bench_path",)}
        for suite, keys in needs.items():
            problems += [f"stage.{key} must be set for suite {suite}" for key in keys
                         if suite in self.suites and not getattr(self, key)]
        if "win_rate" in self.suites and self.ranker in ("pairrm", "reward_model") and not self.ranker_model:
            problems.append(f"stage.ranker_model must name a checkpoint for stage.ranker={self.ranker}")
        if ("win_rate" in self.suites or self.mt_bench_judge) and self.ranker == "judge" and not self.judge_model:
            problems.append("stage.judge_model must name the judge for stage.ranker=judge")
        if self.mt_bench_judge and (self.ranker != "judge" or self.judge_mode != "pointwise" or not self.judge_model):
            problems.append("stage.mt_bench_judge needs stage.ranker=judge, stage.judge_mode=pointwise and "
                            "stage.judge_model")
        if any(shots < 0 for shots in self.mmlu_shots):
            problems.append(f"stage.mmlu_shots must be >= 0 (got {self.mmlu_shots})")
        for key in ("bootstrap_resamples", "max_prompt_tokens", "eval_batch_size", "judge_samples"):
            if getattr(self, key) < 1:
                problems.append(f"stage.{key} must be >= 1 (got {getattr(self, key)})")
        for key in ("max_instructions", "mmlu_max_rows", "mt_bench_max_questions"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                problems.append(f"stage.{key} must be >= 1 or null (got {getattr(self, key)})")
        return problems


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
