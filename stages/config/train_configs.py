"""Configs of the training stages: ``prepare``, ``joint_train`` (with :class:`TrainSettings`), ``train_rm`` and
``filter``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from stages.config.checks import at_least
from stages.config.errors import runtime
from stages.config.sections import check_choice

if TYPE_CHECKING:
    from stages.config.run_config import RunConfig

from stages.config.stage_base import StageConfig


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
    lr: float = 3e-4  # tiny world models: verifier gain +0.10 vs +0.06 at 1e-4 (with loss.nll_weight); tune for HF models
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
    ref_cache_eager: bool = runtime(False)  # compute every pair's reference log-probs before the first step
    prefix_sharing: bool = runtime(False)
    # recompute activations in the backward pass: less memory for about one more forward per step
    gradient_checkpointing: bool = runtime(False)

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
        # keep_checkpoints <= 0 deletes each checkpoint as it is written, so a killed run could not resume
        at_least(problems, prefix, self, ("eval_max_rows", "keep_checkpoints"), 1)
        at_least(problems, prefix, self, ("weight_decay", "max_grad_norm"), 0)  # max_grad_norm=0: no clipping
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
        if not self.reference:
            problems.append("stage.reference must be 'initial', 'previous', a model path or prev:joint_train")
        check_choice(problems, "stage.strategy", self.strategy, ("auto", "ddp", "deepspeed"))
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append(f"stage.zero_stage must be 0..3 (got {self.zero_stage})")
        if run.model.lora.enabled and run.recipe.name and not self.save_merged:
            # the next round starts from model/merged; an adapter alone would be re-applied to the wrong base
            problems.append("a recipe with model.lora.enabled=true needs "
                            "recipe.stage_settings.joint_train.save_merged=true (the next round's policy)")
        if any(len(point) != 2 for point in self.ref_pareto):
            problems.append("stage.ref_pareto must be a list of [sft_loss, pref_loss] pairs")
        at_least(problems, "stage", self, ("early_stop_eps",), 0, allow_none=True)
        at_least(problems, "stage", self, ("num_threads",), 0)
        return problems


DATA_HALVES = ("all", "first", "second")


@dataclass
class TrainRMConfig(StageConfig):
    """A Bradley-Terry reward model trained on ``data.preference`` (held-out ``data.preference_eval``).

    ``base_model``: the causal LM the reward model starts from ("" = the run's base model ``model.*``; a model
    directory, a ``joint_train``/``train_rm`` artifact or ``round:``/``prev:`` reference to one). A scalar head
    reads the last non-padding token; LoRA with ``model.lora.*``, else full fine-tuning; ``stage.train`` as in
    joint_train (``pref_batch_size`` pairs per micro-batch). ``margin``: use each pair's ``margin`` column as
    the Bradley-Terry margin when the rows carry one (none otherwise). ``center_rewards_coefficient``: TRL's
    reward centering (null = off). ``data_half``: train on all rows of ``data.preference`` or only on the
    ``first``/``second`` half of them (in file order, after ``max_rows``), so two reward models can be trained
    on disjoint data, e.g. a ranker and a judge.
    """

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data.preference", "data.preference_eval", "data.max_length",
                                           "data.truncation", "data.on_bad_row", "data.duplicates", "seed")
    name: str = "train_rm"
    base_model: str = ""
    train: TrainSettings = field(default_factory=TrainSettings)
    margin: bool = False
    center_rewards_coefficient: float | None = None
    data_half: str = "all"
    strategy: str = runtime("auto")
    zero_stage: int = runtime(2)
    offload: bool = runtime(False)
    num_threads: int = runtime(0)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run) + self.train.validate("stage.train")
        check_choice(problems, "stage.data_half", self.data_half, DATA_HALVES)
        check_choice(problems, "stage.strategy", self.strategy, ("auto", "ddp", "deepspeed"))
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append(f"stage.zero_stage must be 0..3 (got {self.zero_stage})")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            problems.append(f"stage.center_rewards_coefficient must be >= 0 or null (got "
                            f"{self.center_rewards_coefficient})")
        if not run.data.preference.path:
            problems.append("data.preference.path must name the preference pairs to train the reward model on")
        if self.train.prefix_sharing:
            problems.append("stage.train.prefix_sharing must be false: a reward model scores whole sequences")
        if self.train.ref_cache or self.train.ref_cache_eager:
            problems.append("stage.train.ref_cache must be false: reward-model training has no reference model")
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
                                           "data.truncation", "data.on_bad_row", "data.duplicates", "loss", "seed")
    name: str = "filter"
    kind: str = "sft"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 16
    golden_batch_size: int = 8
    lr: float = 1e-4
    # The defaults separate noise in one pass (scripts/filter_eval.py, world=ci and world=default):
    # - the proxy θ' approximates the lower-level argmin, so it moves faster than θ (10x lr): with
    #   proxy_lr = lr the two models stay nearly equal for a pass and the gap ℓ(θ) - ℓ(θ') is mostly noise;
    # - plain SGD on the logits: each row gets one or two selector gradients per run, and Adam's per-coordinate
    #   normalisation turns each into ±lr whatever the gap (AUROC 0.82-0.88 vs 0.96-0.99 with SGD on world=ci);
    # - rho 1.0 (SEAL's recipe): θ trains on the golden set only in the first epoch, so its candidate losses
    #   are a clean reference, and θ needs no backward pass through the candidates (a cheaper step).
    proxy_lr: float | None = 1e-3
    selector_lr: float = 1.0
    selector_optimizer: str = "sgd"
    activation: str = "softmax"
    rho: float = 1.0
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
        top = 2.0 if self.activation == "sigmoid" else math.inf  # weights: 2·sigmoid in (0, 2), N·softmax in (0, N)
        if self.keep_rule == "threshold" and not 0.0 < self.threshold < top:
            problems.append(f"stage.threshold must be in (0, {top}) for stage.keep_rule=threshold and "
                            f"stage.activation={self.activation}, else it keeps every row or none (got {self.threshold})")
        if self.rho_min > self.rho:
            problems.append(f"stage.rho_min must be <= stage.rho (got {self.rho_min} > {self.rho})")
        at_least(problems, "stage", self, ("max_grad_norm", "num_threads"), 0)  # max_grad_norm=0: no clipping
        return problems


@dataclass
class IterateConfig(StageConfig):
    """``stage=iterate``: run ``rounds`` rounds of ``recipe`` in this process (each stage under the artifact
    contract, so a re-run resumes), then print and write a per-round summary. ``list_stages`` only prints the
    plan as ``key value`` lines (``rounds N``, ``run_dir D``, ``stage S``...), which ``recipes/iterative/run.sh``
    loops over."""

    name: str = "iterate"
    list_stages: bool = runtime(False)

    def validate(self, run: RunConfig) -> list[str]:
        problems = super().validate(run)
        if not run.recipe.name:
            problems.append("stage=iterate needs a recipe: recipe=toy | aipo | bipost | rlhflow (configs/recipe/)")
        return problems
