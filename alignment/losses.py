"""SFT and preference losses: tensors in, **per-example** losses out (no reduction, no weighting).

The trainer reduces (and weights) the ``[B]`` losses; data filtering needs the per-example values. Every
computation runs in float32 whatever the input dtype. Formulas: LOSSES.md §4 and REFERENCES.md §1.2, §6.1; each
loss cites its paper in :mod:`alignment.losses_pref`.

Preference losses are chosen with the closed :class:`LossType` enum and computed by the single dispatch
function :func:`preference_loss`; :class:`LossParams` holds every hyper-parameter and
:meth:`LossParams.validate` reports bad or ignored ones before training starts.
"""

from __future__ import annotations

import torch

from alignment import losses_pref as formulas
from alignment.logprobs import sequence_logprobs
from alignment.losses_types import (
    LossOutput,
    LossParams,
    LossType,
    PreferenceInputs,
    TokenLossSum,
    input_problems,
)

__all__ = [
    "LossOutput",
    "LossParams",
    "LossType",
    "PreferenceInputs",
    "TokenLossSum",
    "preference_loss",
    "sft_loss",
    "sft_token_loss_sum",
]

# ORPO's log-odds need p = exp(ℓ̄) < 1; float32 rounding can push a near-certain response's mean log-prob to
# 0 or slightly above, so it is clamped just below 0 (gradient through the clamp is then 0 for that row).
ORPO_MAX_MEAN_LOGP = -1e-6


def sft_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> TokenLossSum:
    """Summed token cross-entropy and response-token count per example.

    For the XRIGHT convention (a token-level mean over the whole micro-batch, REFERENCES §1.2) the trainer uses
    ``out.loss_sum.sum() / out.token_count.sum().clamp(min=1)``; longer responses then weigh more.

    Args:
        logits: ``[B, T, V]`` causal-LM logits.
        labels: ``[B, T]`` token ids with -100 on prompt and padding (shifted internally, see
            :mod:`alignment.logprobs`).

    Returns:
        :class:`TokenLossSum` with float32 ``loss_sum [B]`` and int64 ``token_count [B]``.
    """
    sequence = sequence_logprobs(logits, labels)
    return TokenLossSum(loss_sum=-sequence.sum, token_count=sequence.count)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example token-mean cross-entropy over response tokens, float32 ``[B]`` (0 for an empty response).

    Averaging these gives a per-sample mean (every example weighs the same); see :func:`sft_token_loss_sum` for
    the batch token-mean.

    Args:
        logits: ``[B, T, V]`` causal-LM logits.
        labels: ``[B, T]`` token ids with -100 on prompt and padding.
    """
    return -sequence_logprobs(logits, labels).mean


def preference_loss(loss_type: LossType | str, params: LossParams, inputs: PreferenceInputs) -> LossOutput:
    """Per-example preference loss, implicit rewards and batch-mean metrics for one batch.

    Args:
        loss_type: a :class:`LossType` (or its string value).
        params: hyper-parameters; ``params.validate(loss_type)`` must return no problem.
        inputs: the ``[B]`` tensors the loss needs (see :class:`PreferenceInputs`).

    Returns:
        :class:`LossOutput`; ``losses`` is float32 ``[B]`` and carries the gradient of the policy inputs.

    Raises:
        ValueError: bad parameters, a missing input, or inputs of mismatched shapes.
    """
    problems = params.validate(loss_type)
    try:
        loss_type = LossType(loss_type)
    except ValueError:
        raise ValueError(problems[0]) from None  # validate() names the unknown type and the valid ones
    problems += input_problems(loss_type, inputs, params)
    if problems:
        raise ValueError(f"preference_loss({loss_type.value}): " + "; ".join(problems))
    if loss_type is LossType.KTO:
        return _unpaired_kto(params, inputs)
    return _paired(loss_type, params, inputs)


def _f32(tensor: torch.Tensor | None, device: torch.device | None = None) -> torch.Tensor:
    """The tensor as float32 on ``device`` (inputs were checked by :func:`input_problems`: never None here)."""
    assert tensor is not None
    return tensor.to(device=device or tensor.device, dtype=torch.float32)


def _chosen_nll(
    inputs: PreferenceInputs, chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor
) -> torch.Tensor:
    """Token-mean NLL on the chosen response: the given ``policy_chosen_nll_mean`` or −ℓ_w/|y_w|."""
    if inputs.policy_chosen_nll_mean is not None:
        return _f32(inputs.policy_chosen_nll_mean, chosen_logps.device)
    return -chosen_logps / chosen_lengths


def _paired(loss_type: LossType, params: LossParams, inputs: PreferenceInputs) -> LossOutput:
    """Every paired loss: shared log-ratio bookkeeping, then one formula."""
    chosen_logps = _f32(inputs.policy_chosen_logps)
    device = chosen_logps.device  # lengths or cached reference log-probs may arrive on another device
    rejected_logps = _f32(inputs.policy_rejected_logps, device)
    # An empty response (length 0) has ℓ = 0; clamping keeps ℓ/|y| = 0 instead of NaN.
    chosen_lengths = _f32(inputs.chosen_lengths, device).clamp(min=1.0)
    rejected_lengths = _f32(inputs.rejected_lengths, device).clamp(min=1.0)
    chosen_mean = chosen_logps / chosen_lengths
    rejected_mean = rejected_logps / rejected_lengths
    nll = _chosen_nll(inputs, chosen_logps, chosen_lengths)
    metrics: dict[str, torch.Tensor] = {}

    if loss_type.needs_reference:
        chosen_ref = _f32(inputs.reference_chosen_logps, device)
        rejected_ref = _f32(inputs.reference_rejected_logps, device)
        chosen_ratio, rejected_ratio = chosen_logps - chosen_ref, rejected_logps - rejected_ref
        if loss_type is LossType.AIPO:
            policy_margin, reference_margin = chosen_logps - rejected_logps, chosen_ref - rejected_ref
            losses = _aipo(params, policy_margin, reference_margin) + params.aipo_lambda * nll
            metrics["margin/policy"] = params.beta * policy_margin
            metrics["margin/reference"] = params.beta * reference_margin
        else:
            losses = _reference_formula(
                loss_type, params, chosen_ratio, rejected_ratio, chosen_lengths, rejected_lengths
            )
        chosen_rewards, rejected_rewards = params.beta * chosen_ratio, params.beta * rejected_ratio
    else:
        losses = _reference_free_formula(loss_type, params, chosen_mean, rejected_mean, nll, metrics)
        chosen_rewards, rejected_rewards = params.beta * chosen_mean, params.beta * rejected_mean

    if params.nll_weight > 0.0:
        losses = losses + params.nll_weight * nll
    if params.nll_weight > 0.0 or loss_type.uses_policy_nll:
        metrics["nll"] = nll
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    metrics.update(
        {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
            "length/chosen": chosen_lengths,
            "length/rejected": rejected_lengths,
        }
    )
    return LossOutput(losses, chosen_rewards, rejected_rewards, _batch_means(metrics))


def _reference_formula(
    loss_type: LossType,
    params: LossParams,
    chosen_ratio: torch.Tensor,
    rejected_ratio: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> torch.Tensor:
    """Reference losses other than AIPO, as functions of r_w = ℓ_w − ℓ^ref_w and r_l = ℓ_l − ℓ^ref_l."""
    beta, eps = params.beta, params.label_smoothing
    scaled_margin = beta * (chosen_ratio - rejected_ratio)
    if loss_type is LossType.DPO:
        return formulas.sigmoid_loss(scaled_margin, eps)
    if loss_type is LossType.ROBUST:
        return formulas.robust_loss(scaled_margin, eps)
    if loss_type is LossType.HINGE:
        return formulas.hinge_loss(scaled_margin)
    if loss_type is LossType.IPO:
        return formulas.ipo_loss(chosen_ratio / chosen_lengths - rejected_ratio / rejected_lengths, beta)
    pair_formulas = {
        LossType.KTO_PAIR: formulas.kto_pair_loss,
        LossType.SPPO_HARD: formulas.sppo_hard_loss,
        LossType.NCA_PAIR: formulas.nca_pair_loss,
        LossType.BCO_PAIR: formulas.bco_pair_loss,
        LossType.APO_ZERO: formulas.apo_zero_loss,
        LossType.APO_DOWN: formulas.apo_down_loss,
    }
    return pair_formulas[loss_type](chosen_ratio, rejected_ratio, beta)


def _aipo(params: LossParams, policy_margin: torch.Tensor, reference_margin: torch.Tensor) -> torch.Tensor:
    """AIPO preference term (Shen et al. 2024, arXiv 2409.08845; REFERENCES §6.1), without its NLL term.

    z = Δπ − (1+α)·Δref − γ and L = −(1−ε) log σ(βz) − ε log σ(−βz); γ sits inside z, so the logit is shifted
    by βγ, as in the reference code. The caller adds λ·NLL(y_w) (= −λ·ℓ_w/|y_w|).
    """
    z = policy_margin - (1.0 + params.alpha) * reference_margin - params.gamma
    return formulas.sigmoid_loss(params.beta * z, params.label_smoothing)


def _reference_free_formula(
    loss_type: LossType,
    params: LossParams,
    chosen_mean: torch.Tensor,
    rejected_mean: torch.Tensor,
    nll: torch.Tensor,
    metrics: dict[str, torch.Tensor],
) -> torch.Tensor:
    """SimPO and ORPO, both on length-averaged policy log-probs ℓ̄."""
    if loss_type is LossType.SIMPO:
        # Meng et al. 2024, SimPO (arXiv 2405.14734), Eq. 6: −log σ(β(ℓ̄_w − ℓ̄_l) − γ), with TRL CPO's ε.
        logits = params.beta * (chosen_mean - rejected_mean) - params.gamma
        return formulas.sigmoid_loss(logits, params.label_smoothing)
    if loss_type is LossType.ORPO:
        # Hong et al. 2024, ORPO (arXiv 2403.07691), Eq. 6: NLL(y_w) − λ·log σ(log odds(y_w) − log odds(y_l)),
        # λ = β as in TRL; ℓ̄ in float32, clamped below 0 (see ORPO_MAX_MEAN_LOGP).
        log_odds = formulas.orpo_log_odds_diff(
            chosen_mean.clamp(max=ORPO_MAX_MEAN_LOGP), rejected_mean.clamp(max=ORPO_MAX_MEAN_LOGP)
        )
        log_odds_ratio = torch.nn.functional.logsigmoid(log_odds)
        metrics["log_odds_chosen"] = log_odds
        metrics["log_odds_ratio"] = log_odds_ratio
        return nll - params.beta * log_odds_ratio
    raise AssertionError(f"{loss_type} is not a reference-free loss")


def _unpaired_kto(params: LossParams, inputs: PreferenceInputs) -> LossOutput:
    """Unpaired KTO over completions labelled desirable / undesirable (see :func:`formulas.kto_loss`)."""
    policy = _f32(inputs.policy_completion_logps)
    logratio = policy - _f32(inputs.reference_completion_logps, policy.device)
    assert inputs.completion_is_desirable is not None
    desirable = inputs.completion_is_desirable.to(device=policy.device, dtype=torch.bool)
    reference_point = formulas.kto_reference_point(
        None if inputs.kl_policy_logps is None else inputs.kl_policy_logps.float(),
        None if inputs.kl_reference_logps is None else inputs.kl_reference_logps.float(),
    ).to(policy.device)
    losses = formulas.kto_loss(
        logratio, desirable, reference_point, params.beta, params.desirable_weight, params.undesirable_weight
    )
    metrics: dict[str, torch.Tensor] = {"kl": reference_point, "count/desirable": desirable.float().sum()}
    metrics["count/undesirable"] = (~desirable).float().sum()
    if params.nll_weight > 0.0:
        # NLL only on desirable completions: the "chosen" side of an unpaired dataset.
        nll = -policy / _f32(inputs.completion_lengths, policy.device).clamp(min=1.0)
        losses = losses + params.nll_weight * torch.where(desirable, nll, torch.zeros_like(nll))
        metrics["nll"] = nll[desirable]
    rewards = (params.beta * logratio).detach()
    chosen_rewards, rejected_rewards = rewards[desirable], rewards[~desirable]
    metrics["rewards/chosen"] = chosen_rewards
    metrics["rewards/rejected"] = rejected_rewards
    metrics["logps/chosen"] = policy.detach()[desirable]
    metrics["logps/rejected"] = policy.detach()[~desirable]
    return LossOutput(losses, chosen_rewards, rejected_rewards, _batch_means(metrics))


def _batch_means(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each metric tensor as a Python float with a single device sync; empty tensors are left out."""
    present = {name: value.detach().float().mean() for name, value in metrics.items() if value.numel() > 0}
    if not present:
        return {}
    values = torch.stack(list(present.values())).tolist()
    return dict(zip(present.keys(), values, strict=True))
