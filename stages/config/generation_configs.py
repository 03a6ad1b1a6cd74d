"""Configs of the stages that generate or judge text: ``create_instructions``, ``generate``, ``rank``, ``evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from stages.config.checks import above, at_least
from stages.config.errors import runtime
from stages.config.sections import check_choice

if TYPE_CHECKING:
    from stages.config.run_config import RunConfig

from stages.config.stage_base import StageConfig


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
        at_least(problems, "stage", self, ("max_model_len",), 1, allow_none=True)
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

    # round: world prompts and self-instruct sampling are seeded per round, so rounds differ
    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data.prompts", "seed", "round")
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
        above(problems, "stage", self, ("shard_wait_timeout_s",))
        return problems


@dataclass
class RankerSettings:
    """Which ranker scores responses and its limits; shared by ``rank`` and ``evaluate`` (win rates).

    PairRM inputs are cut to ``source_max_tokens``/``candidate_max_tokens``; reward models to
    ``reward_max_tokens``; the judge (``judge_model``, default the round's policy) samples ``judge_samples``
    rubric scores (pointwise) or verdicts in both orders (pairwise).
    """

    ranker: str = "verifier"
    ranker_model: str = ""
    ranker_dtype: str = "float32"
    source_max_tokens: int = 1224
    candidate_max_tokens: int = 412
    reward_max_tokens: int = 2048
    judge_model: str = ""
    judge_mode: str = "pointwise"
    judge_samples: int = 3
    judge_temperature: float = 0.7
    judge_max_new_tokens: int = 96
    judge_max_prompt_tokens: int = 896


@dataclass
class RankConfig(RankerSettings, StageConfig):
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
    pair_rule: str = "best_vs_worst"
    min_margin: float = 0.0
    length_alpha: float = 0.0
    judge_mode: str = "pointwise"
    judge_samples: int = 3
    judge_temperature: float = 0.7
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
        above(problems, "stage", self, ("shard_wait_timeout_s",))
        return problems


EVALUATION_SUITES = ("sft_loss", "preference", "win_rate", "mmlu", "mt_bench", "verifier")


@dataclass
class EvaluateConfig(RankerSettings, GenerationRuntimeFields, StageConfig):
    """Standalone evaluation of ``models`` (``base``, stage artifacts such as ``round_00/joint_train``, model
    directories, LoRA adapter directories or Hub ids) on ``suites``:

    ``sft_loss`` (``data.sft_eval``), ``preference`` (``data.preference_eval``, reference = the base model,
    loss = ``loss.*``), ``win_rate`` against ``reference_outputs`` (AlpacaEval jsonl/json: instruction, output,
    generator) judged by ``ranker`` (pairrm | reward_model with ``ranker_model``: a directory, a ``train_rm``
    artifact or ``round:``/``prev:train_rm``; judge with ``judge_model``); with ``win_rate_baseline`` (a model spec
    like ``models``) that model's answers to the same instructions are the references instead,
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
    win_rate_baseline: str = ""
    max_instructions: int | None = None
    ranker: str = "pairrm"
    judge_mode: str = "pairwise"
    judge_samples: int = 1
    judge_temperature: float = 0.0
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
    # suite preference: reference log-probs from the run's store shared with training (float rounding may differ
    # from a live reference's by the batches' padding, hence runtime, as training's stage.train.ref_cache)
    ref_cache: bool = runtime(False)
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
        if self.win_rate_baseline and "win_rate" not in self.suites:
            problems.append("stage.win_rate_baseline is only used by suite win_rate; add it to stage.suites")
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
        at_least(problems, "stage", self, ("source_max_tokens", "candidate_max_tokens", "reward_max_tokens",
                                           "judge_max_new_tokens", "judge_max_prompt_tokens"), 1)
        at_least(problems, "stage", self, ("judge_temperature",), 0)
        return problems
