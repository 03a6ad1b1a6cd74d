"""Per-example preference-loss formulas: float32 tensors in, ``[B]`` losses out, no reduction.

Notation (LOSSES.md §4.1): ℓ_w, ℓ_l are **summed** response-token log-probs of the chosen / rejected response
under the policy; r_w = ℓ_w − ℓ^ref_w and r_l = ℓ_l − ℓ^ref_l are the log-ratios to the reference; h = r_w − r_l;
ℓ̄ = ℓ / |y| is the per-token average; σ is the logistic function and log σ(z) = −softplus(−z).

The functions are deliberately dumb: :func:`alignment.losses.preference_loss` checks inputs, casts them to float32
and picks the formula; everything here is a direct transcription of one equation, each citing its paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """Numerically stable ``log(1 - exp(x))`` for ``x <= 0`` (Mächler 2012, "Accurately computing log(1-exp(-|a|))").

    For x > −ln 2, ``log(−expm1(x))`` keeps precision as x → 0⁻; for x ≤ −ln 2, ``log1p(−exp(x))`` keeps it as
    x → −∞. Each branch is evaluated on inputs clamped to its own region so the branch ``torch.where`` discards
    never produces inf/NaN that would leak into the gradient. ``x = 0`` gives −inf; x > 0 is undefined (NaN).
    """
    near_zero = torch.log(-torch.expm1(x.clamp(min=-LN2)))
    far_from_zero = torch.log1p(-torch.exp(x.clamp(max=-LN2)))
    return torch.where(x > -LN2, near_zero, far_from_zero)


def sigmoid_loss(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """cDPO / DPO: ``−(1−ε) log σ(z) − ε log σ(−z)`` with ``z`` the already-scaled logit (e.g. βh).

    DPO: Rafailov et al. 2023 (arXiv 2305.18290), Eq. 7, is the ε = 0 case. Conservative DPO: Mitchell 2023,
    "A note on DPO with noisy preferences & relationship to IPO", ε = probability that a label is flipped.
    """
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def robust_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """rDPO: ``[−(1−ε) log σ(z) + ε log σ(−z)] / (1 − 2ε)``, ε ∈ [0, 0.5).

    Chowdhury et al. 2024, "Provably Robust DPO" (arXiv 2403.00409): the unbiased de-noised BT loss under
    label-flip rate ε. Equal to DPO at ε = 0.
    """
    eps = label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)


def hinge_loss(logits: torch.Tensor) -> torch.Tensor:
    """SLiC / RSO hinge: ``max(0, 1 − βh)`` with ``logits = βh``, so β = 1/margin.

    Zhao et al. 2023, SLiC-HF (arXiv 2305.10425), calibration loss; Liu et al. 2023, RSO (arXiv 2309.06657).
    """
    return torch.relu(1.0 - logits)


def ipo_loss(averaged_logratio_diff: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO: ``(h̄ − 1/(2β))²`` with h̄ = r_w/|y_w| − r_l/|y_l| (TRL v1 length-averaged convention).

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
    (arXiv 2310.12036), Eq. 17; β plays the role of τ.
    """
    return (averaged_logratio_diff - 1.0 / (2.0 * beta)) ** 2


def orpo_log_odds_diff(mean_logp_chosen: torch.Tensor, mean_logp_rejected: torch.Tensor) -> torch.Tensor:
    """log odds(y_w) − log odds(y_l) with odds(y) = p/(1−p), p = exp(ℓ̄) (ORPO, Hong et al. 2024, arXiv 2403.07691, Eq. 7).

    log odds(y) = ℓ̄ − log(1 − e^ℓ̄). Callers clamp ℓ̄ < 0 first (ℓ̄ = 0 means p = 1 and infinite odds).
    """
    log_odds_chosen = mean_logp_chosen - log1mexp(mean_logp_chosen)
    log_odds_rejected = mean_logp_rejected - log1mexp(mean_logp_rejected)
    return log_odds_chosen - log_odds_rejected


def kto_pair_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """Paired KTO (TRL v0.24 / AIPO ``kto_pair``; HALOs report, Ethayarajh et al. 2024, arXiv 2402.01306, Eq. 7).

    With KL_w = max(0, mean_batch r_w) and KL_l = max(0, mean_batch r_l), both detached (the KTO reference point
    z₀ is not back-propagated through; TRL's ``kto_pair`` did not detach), the per-pair loss is
    ``[1 − σ(β(r_w − KL_l))] + [1 − σ(β(KL_w − r_l))]``: the chosen half is anchored on the rejected half's KL and
    vice versa. TRL concatenated the two halves and averaged over 2B rows, so its batch mean is half of ours.
    An empty batch returns an empty tensor.
    """
    if chosen_logratio.numel() == 0:
        return chosen_logratio.clone()
    kl_chosen = chosen_logratio.detach().mean().clamp(min=0.0)
    kl_rejected = rejected_logratio.detach().mean().clamp(min=0.0)
    chosen_term = 1.0 - torch.sigmoid(beta * (chosen_logratio - kl_rejected))
    rejected_term = 1.0 - torch.sigmoid(beta * (kl_chosen - rejected_logratio))
    return chosen_term + rejected_term


def sppo_hard_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """SPPO with hard preference P(w≻l)=1: ``(r_w − 1/(2β))² + (r_l + 1/(2β))²``.

    Wu et al. 2024, "Self-Play Preference Optimization" (arXiv 2405.00675), Eq. 4.7 with P̂_w = 1, P̂_l = 0
    (twice the official ``sppo_single`` with P = 1; LOSSES.md §4.6).
    """
    half_inverse_beta = 1.0 / (2.0 * beta)
    return (chosen_logratio - half_inverse_beta) ** 2 + (rejected_logratio + half_inverse_beta) ** 2


def nca_pair_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """NCA: ``−log σ(βr_w) − ½ log σ(−βr_w) − ½ log σ(−βr_l)``.

    Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards" (arXiv 2402.05369),
    pairwise NCA objective. Not monotone in r_w.
    """
    chosen = beta * chosen_logratio
    rejected = beta * rejected_logratio
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def bco_pair_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """BCO (TRL v1 form, no running-mean shift δ): ``−log σ(βr_w) − log σ(−βr_l)``.

    Jung et al. 2024, "Binary Classifier Optimization for LLM Alignment" (arXiv 2404.04656); v0.24's δ (running
    mean of rewards) is left out so the loss is a pure function of the batch.
    """
    return -F.logsigmoid(beta * chosen_logratio) - F.logsigmoid(-beta * rejected_logratio)


def apo_zero_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """APO-zero: ``[1 − σ(βr_w)] + σ(βr_l)`` (chosen better than the model: push r_w up, r_l down).

    D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions" (arXiv 2408.06266).
    """
    return (1.0 - torch.sigmoid(beta * chosen_logratio)) + torch.sigmoid(beta * rejected_logratio)


def apo_down_loss(
    chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """APO-down: ``σ(βr_w) + [1 − σ(β(r_w − r_l))]`` (chosen worse than the model: push both down, keep order).

    D'Oosterlinck et al. 2024 (arXiv 2408.06266).
    """
    return torch.sigmoid(beta * chosen_logratio) + (
        1.0 - torch.sigmoid(beta * (chosen_logratio - rejected_logratio))
    )


def kto_reference_point(
    kl_policy_logps: torch.Tensor | None, kl_reference_logps: torch.Tensor | None
) -> torch.Tensor:
    """KTO z₀ = max(0, mean_batch[ℓ_θ(y'|x) − ℓ_ref(y'|x)]) over mismatched completions, detached; scalar.

    Missing or empty KL tensors give z₀ = 0 (TRL's behaviour when the KL term is disabled). To use the global
    estimate of TRL, pass KL log-probs gathered across ranks.
    """
    if kl_policy_logps is None or kl_reference_logps is None or kl_policy_logps.numel() == 0:
        reference = kl_policy_logps if kl_policy_logps is not None else kl_reference_logps
        device = reference.device if reference is not None else None
        return torch.zeros((), dtype=torch.float32, device=device)
    return (kl_policy_logps - kl_reference_logps).detach().mean().clamp(min=0.0)


def kto_loss(
    logratio: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> torch.Tensor:
    """Unpaired KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv 2402.01306, the KTO loss; as in TRL's ``KTOTrainer``).

    Desirable rows: ``w_d·[1 − σ(β(r − z₀))]``; undesirable rows: ``w_u·[1 − σ(β(z₀ − r))]``; r = ℓ − ℓ^ref.
    Computed row-wise with ``torch.where``, so a batch with no desirable (or no undesirable) rows is fine.
    """
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - reference_point)))
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (reference_point - logratio)))
    return torch.where(desirable, desirable_losses, undesirable_losses)
