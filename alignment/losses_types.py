"""Types of :mod:`alignment.losses`: the loss enum, its hyper-parameters, inputs and outputs, and input checks.

Import them from :mod:`alignment.losses`, which re-exports everything public here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum

import torch


class LossType(str, Enum):
    """Closed set of preference losses; the capability properties tell the trainer what each one needs."""

    DPO = "dpo"  # sigmoid DPO, cDPO when label_smoothing > 0
    HINGE = "hinge"
    IPO = "ipo"
    ROBUST = "robust"
    SIMPO = "simpo"
    ORPO = "orpo"
    KTO = "kto"  # unpaired
    KTO_PAIR = "kto_pair"
    AIPO = "aipo"
    SPPO_HARD = "sppo_hard"
    NCA_PAIR = "nca_pair"
    BCO_PAIR = "bco_pair"
    APO_ZERO = "apo_zero"
    APO_DOWN = "apo_down"

    @property
    def needs_reference(self) -> bool:
        """True when the loss uses reference-model log-probs (everything except SimPO and ORPO)."""
        return self not in _REFERENCE_FREE

    @property
    def length_normalised(self) -> bool:
        """True when the preference term uses per-token averaged log-probs ℓ/|y| rather than sums."""
        return self in _LENGTH_NORMALISED

    @property
    def paired(self) -> bool:
        """False only for unpaired KTO, whose rows are single completions labelled desirable or not."""
        return self is not LossType.KTO

    @property
    def uses_policy_nll(self) -> bool:
        """True when the loss itself contains an NLL-on-chosen term (ORPO, AIPO), independent of nll_weight."""
        return self in _BUILT_IN_NLL


_REFERENCE_FREE = frozenset({LossType.SIMPO, LossType.ORPO})
_LENGTH_NORMALISED = frozenset({LossType.IPO, LossType.SIMPO, LossType.ORPO})
_BUILT_IN_NLL = frozenset({LossType.ORPO, LossType.AIPO})
# Which optional hyper-parameters each loss reads; any other one must stay at its neutral default.
_USES_LABEL_SMOOTHING = frozenset({LossType.DPO, LossType.ROBUST, LossType.SIMPO, LossType.AIPO})
_USES_GAMMA = frozenset({LossType.SIMPO, LossType.AIPO})
_USES_KTO_WEIGHTS = frozenset({LossType.KTO})


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters of every preference loss; each loss reads only the ones it needs.

    Attributes:
        beta: β, inverse temperature of the implicit reward (τ for IPO, λ for ORPO, 1/margin for hinge).
        label_smoothing: ε, label-flip rate for cDPO (dpo), rDPO (robust, needs ε < 0.5), SimPO and AIPO.
        gamma: γ, target margin for SimPO (−log σ(βΔ̄ − γ)) and AIPO (inside z, so shifted by βγ).
        alpha: AIPO agreement α, scaling the reference margin by (1 + α).
        aipo_lambda: AIPO's λ, weight of its length-normalised NLL on the chosen response.
        nll_weight: extra RPO-style ``nll_weight · (−ℓ_w/|y_w|)`` added to any loss (KTO: desirable rows).
        desirable_weight: KTO w_d.
        undesirable_weight: KTO w_u.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.0
    alpha: float = 0.0
    aipo_lambda: float = 0.0
    nll_weight: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def validate(self, loss_type: LossType | str) -> list[str]:
        """Every problem with these parameters for ``loss_type`` (empty when fine), including ignored ones."""
        try:
            loss = LossType(loss_type)
        except ValueError:
            return [f"unknown loss_type {loss_type!r}; expected one of {[t.value for t in LossType]}"]
        problems = [
            f"{f.name}={getattr(self, f.name)!r} must be a finite number"
            for f in fields(self)
            if not _is_finite_number(getattr(self, f.name))
        ]
        if problems:
            return problems
        if self.beta <= 0.0:
            problems.append(f"beta={self.beta} must be > 0")
        if self.nll_weight < 0.0:
            problems.append(f"nll_weight={self.nll_weight} must be >= 0")
        problems += self._label_smoothing_problems(loss)
        problems += self._specific_problems(loss)
        return problems

    def _label_smoothing_problems(self, loss: LossType) -> list[str]:
        eps = self.label_smoothing
        if loss not in _USES_LABEL_SMOOTHING:
            return _ignored("label_smoothing", eps, 0.0, loss)
        if loss is LossType.ROBUST and not 0.0 <= eps < 0.5:
            return [f"label_smoothing={eps} must be in [0, 0.5) for robust (it divides by 1 - 2ε)"]
        if not 0.0 <= eps <= 0.5:
            return [
                f"label_smoothing={eps} must be in [0, 0.5] for {loss.value} (above 0.5 flips the labels)"
            ]
        return []

    def _specific_problems(self, loss: LossType) -> list[str]:
        problems: list[str] = []
        if loss in _USES_GAMMA:
            if self.gamma < 0.0:
                problems.append(f"gamma={self.gamma} must be >= 0 (a target margin)")
        else:
            problems += _ignored("gamma", self.gamma, 0.0, loss)
        if loss is LossType.AIPO:
            if self.alpha < -1.0:
                problems.append(
                    f"alpha={self.alpha} must be >= -1 (it scales the reference margin by 1 + alpha)"
                )
            if self.aipo_lambda < 0.0:
                problems.append(f"aipo_lambda={self.aipo_lambda} must be >= 0")
        else:
            problems += _ignored("alpha", self.alpha, 0.0, loss) + _ignored(
                "aipo_lambda", self.aipo_lambda, 0.0, loss
            )
        if loss in _USES_KTO_WEIGHTS:
            for name in ("desirable_weight", "undesirable_weight"):
                if getattr(self, name) <= 0.0:
                    problems.append(f"{name}={getattr(self, name)} must be > 0")
        else:
            problems += _ignored("desirable_weight", self.desirable_weight, 1.0, loss)
            problems += _ignored("undesirable_weight", self.undesirable_weight, 1.0, loss)
        return problems


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ignored(name: str, value: float, neutral: float, loss: LossType) -> list[str]:
    """A problem when a parameter that ``loss`` does not read is set: a silently ignored knob is a bug."""
    if value == neutral:
        return []
    return [f"{name}={value} is not used by loss {loss.value!r}; leave it at {neutral}"]


@dataclass
class PreferenceInputs:
    """Per-example tensors for :func:`alignment.losses.preference_loss`; every tensor is 1-D ``[B]``.

    Paired losses read the ``policy_*``/``reference_*`` chosen/rejected fields: log-probs are **sums** over
    response tokens (``SequenceLogps.sum``) and the lengths are response-token counts (``SequenceLogps.count``).
    Reference fields are needed only when ``loss_type.needs_reference``. ``policy_chosen_nll_mean``, when given,
    replaces −ℓ_w/|y_w| in NLL terms (e.g. a token-mean NLL computed over a different span).

    Unpaired KTO reads ``policy_completion_logps``, ``reference_completion_logps`` and
    ``completion_is_desirable`` (bool ``[B]``), plus the log-probs of mismatched completions (x, y') under policy
    and reference for the KL reference point (any length, may be empty or None: z₀ = 0), and
    ``completion_lengths`` when ``nll_weight > 0``.
    """

    policy_chosen_logps: torch.Tensor | None = None
    policy_rejected_logps: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None
    reference_chosen_logps: torch.Tensor | None = None
    reference_rejected_logps: torch.Tensor | None = None
    policy_chosen_nll_mean: torch.Tensor | None = None
    policy_completion_logps: torch.Tensor | None = None
    reference_completion_logps: torch.Tensor | None = None
    completion_is_desirable: torch.Tensor | None = None
    completion_lengths: torch.Tensor | None = None
    kl_policy_logps: torch.Tensor | None = None
    kl_reference_logps: torch.Tensor | None = None


@dataclass
class LossOutput:
    """Result of :func:`alignment.losses.preference_loss`.

    Attributes:
        losses: float32 ``[B]`` per-example loss (with gradient), unreduced.
        chosen_rewards: detached float32; β·(ℓ_w − ℓ^ref_w) for reference losses, β·ℓ̄_w for SimPO/ORPO, ``[B]``.
            For unpaired KTO: β·r of the desirable rows only, ``[n_desirable]``.
        rejected_rewards: the same for the rejected side (KTO: undesirable rows, ``[n_undesirable]``).
        metrics: batch means as floats (``rewards/*``, ``logps/*``, ``length/*``, plus loss-specific keys such as
            ``nll``, ``kl``, ``log_odds_ratio``, ``margin/*``); a metric with no rows is left out, never NaN.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenLossSum:
    """Summed response-token cross-entropy ``loss_sum`` (float32 ``[B]``) and ``token_count`` (int64 ``[B]``)."""

    loss_sum: torch.Tensor
    token_count: torch.Tensor


def required_inputs(loss_type: LossType, params: LossParams) -> tuple[str, ...]:
    """Names of the :class:`PreferenceInputs` fields that ``loss_type`` needs with these parameters."""
    if not loss_type.paired:
        unpaired: tuple[str, ...] = (
            "policy_completion_logps",
            "reference_completion_logps",
            "completion_is_desirable",
        )
        return unpaired + (("completion_lengths",) if params.nll_weight > 0.0 else ())
    needed: tuple[str, ...] = (
        "policy_chosen_logps",
        "policy_rejected_logps",
        "chosen_lengths",
        "rejected_lengths",
    )
    if loss_type.needs_reference:
        needed += ("reference_chosen_logps", "reference_rejected_logps")
    return needed


def input_problems(loss_type: LossType, inputs: PreferenceInputs, params: LossParams) -> list[str]:
    """Missing fields, non-1-D tensors and batch-size mismatches, each naming the field."""
    needed = required_inputs(loss_type, params)
    problems = [
        f"input {name} is required by {loss_type.value}" for name in needed if getattr(inputs, name) is None
    ]
    per_example = [*needed, "policy_chosen_nll_mean"] if loss_type.paired else list(needed)
    present = {name: getattr(inputs, name) for name in per_example if getattr(inputs, name) is not None}
    problems += [
        f"input {name} must be 1-D [B], got shape {tuple(t.shape)}"
        for name, t in present.items()
        if t.dim() != 1
    ]
    sizes = {name: t.shape[0] for name, t in present.items() if t.dim() == 1}
    if len(set(sizes.values())) > 1:
        problems.append(f"inputs disagree on the batch size B: {sizes}")
    if not loss_type.paired:
        problems += _kto_input_problems(inputs)
    return problems


def _kto_input_problems(inputs: PreferenceInputs) -> list[str]:
    problems: list[str] = []
    labels = inputs.completion_is_desirable
    if labels is not None and (labels.dtype.is_floating_point or labels.dtype.is_complex):
        problems.append(
            f"input completion_is_desirable must be bool (or 0/1 integers), got dtype {labels.dtype}"
        )
    elif labels is not None and labels.dtype != torch.bool and bool(((labels != 0) & (labels != 1)).any()):
        problems.append("input completion_is_desirable must contain only 0/1 (or be a bool tensor)")
    kl_policy, kl_reference = inputs.kl_policy_logps, inputs.kl_reference_logps
    if (kl_policy is None) != (kl_reference is None):
        problems.append(
            "inputs kl_policy_logps and kl_reference_logps must be given together (or both omitted)"
        )
    elif kl_policy is not None and kl_reference is not None and kl_policy.shape != kl_reference.shape:
        problems.append(
            f"inputs kl_policy_logps {tuple(kl_policy.shape)} and kl_reference_logps "
            f"{tuple(kl_reference.shape)} must have the same shape"
        )
    return problems
