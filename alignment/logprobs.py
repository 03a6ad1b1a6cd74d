"""Per-token and per-sequence log-probabilities of labels under a causal LM's logits.

Shift convention (used by every function here): ``logits[:, t]`` is the model's prediction for the token at
position ``t + 1``. So the token log-probs of a ``[B, T]`` label tensor are a ``[B, T - 1]`` tensor aligned with
``labels[:, 1:]``: entry ``[b, t]`` is ``log p(labels[b, t + 1] | labels[b, :t + 1])``. ``labels[:, 0]`` is
never predicted and the last logit position predicts nothing. Positions whose label is ``IGNORE_INDEX`` (-100:
prompt, padding) contribute exactly 0, so every sum is over **response tokens only**.

All results are float32 whatever the logits' dtype. The log-softmax is *selective*: per batch row we take one
``logsumexp`` and one ``gather`` over that row's response positions only, instead of materialising a full
``[B, T, V]`` log-softmax, so at most one row's ``[n, V]`` float32 copy (n response tokens) exists at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SequenceLogps:
    """Per-example log-prob totals over response tokens; every field is ``[B]``.

    ``sum`` is float32, ``count`` is int64 (number of response tokens, i.e. labels != -100 after the shift)
    and ``mean`` = sum / count, defined as 0 for a row without response tokens.
    """

    sum: torch.Tensor
    count: torch.Tensor
    mean: torch.Tensor


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor, what: str = "logits") -> None:
    """Raise a ValueError unless ``logits`` is [B, T, V] and ``labels`` is an integer [B, T]."""
    if logits.dim() != 3:
        raise ValueError(f"{what} must have shape [B, T, V], got {tuple(logits.shape)}")
    if labels.dim() != 2 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape [B, T] = {tuple(logits.shape[:2])} matching {what}, got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got dtype {labels.dtype}")


def shifted_response_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, T - 1]`` mask of predicted response tokens: ``labels[:, 1:] != -100``."""
    return labels[:, 1:] != IGNORE_INDEX


def _safe_targets(labels: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted targets with ignored positions set to id 0 (so ``gather`` is legal), and their mask."""
    mask = shifted_response_mask(labels)
    targets = labels[:, 1:].masked_fill(~mask, 0)
    # One device sync; an out-of-range id would otherwise be a silent CUDA assert deep inside gather.
    if targets.numel() and bool(((targets < 0) | (targets >= vocab_size)).any()):
        raise ValueError(
            f"labels contain token ids outside [0, {vocab_size}) other than the ignore index {IGNORE_INDEX}"
        )
    return targets, mask


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` of each row, as ``logit[target] − logsumexp(logit)``.

    Args:
        logits: ``[N, V]`` the rows that predict the targets (any float dtype).
        targets: ``[N]`` token ids.

    Returns:
        float32 ``[N]``.
    """
    rows = logits.float()
    return rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each shifted label token.

    Args:
        logits: ``[B, T, V]`` causal-LM logits (any float dtype).
        labels: ``[B, T]`` token ids, ``-100`` at prompt and padding positions.

    Returns:
        float32 ``[B, T - 1]`` aligned with ``labels[:, 1:]``; 0 where the label is -100.
    """
    _check_logits_labels(logits, labels)
    targets, mask = _safe_targets(labels, logits.shape[-1])
    out = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
    for row, (row_logits, row_targets, row_mask) in enumerate(zip(logits[:, :-1], targets, mask, strict=True)):
        # Only the response positions: prompt and padding rows of the [T-1, V] logits predict nothing, and on
        # long prompts they are most of the log-softmax's work (forward and backward).
        kept = row_mask.nonzero().squeeze(-1)  # [n]
        out[row, kept] = target_logprobs(row_logits[kept], row_targets[kept])
    return out


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> SequenceLogps:
    """Sum, count and mean of the response-token log-probs of each example.

    Args:
        logits: ``[B, T, V]`` causal-LM logits.
        labels: ``[B, T]`` token ids, ``-100`` outside the response.

    Returns:
        :class:`SequenceLogps` with ``[B]`` fields (see the module docstring for the shift convention).
    """
    per_token = token_logprobs(logits, labels)
    count = shifted_response_mask(labels).sum(dim=-1)
    total = per_token.sum(dim=-1)
    return SequenceLogps(sum=total, count=count, mean=total / count.clamp(min=1))


def token_kl_to_teacher(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Knowledge-distillation loss per example (BiPOST ``KDLoss``; REFERENCES §4.2).

    ``L_b = -Σ_t m_t Σ_v p_teacher,t(v) log p_student,t(v) / Σ_t m_t`` with ``m_t`` the shifted response mask.
    This is the token-mean **cross-entropy** H(p_teacher, p_student) = KL(p_teacher || p_student) + H(p_teacher):
    the forward KL plus the teacher's entropy, a constant for the student, so both have the same gradient. It is
    not 0 when the student equals the teacher. Rows without response tokens give 0. No gradient reaches the
    teacher.

    Args:
        student_logits: ``[B, T, V]`` logits of the model being trained.
        teacher_logits: ``[B, T, V]`` logits of the teacher (same tokenizer and vocabulary size).
        labels: ``[B, T]`` token ids, ``-100`` outside the response (only the mask is used).

    Returns:
        float32 ``[B]``.
    """
    _check_logits_labels(student_logits, labels, what="student_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} != student_logits shape "
            f"{tuple(student_logits.shape)}; the teacher must share the student's tokenizer and vocabulary"
        )
    mask = shifted_response_mask(labels)
    rows = []
    for student_row, teacher_row in zip(student_logits[:, :-1], teacher_logits[:, :-1], strict=True):
        student = student_row.float()  # [T-1, V]
        with torch.no_grad():
            teacher_probs = torch.softmax(teacher_row.float(), dim=-1)
        # Σ_v p_t(v) log p_s(v) = Σ_v p_t(v) s(v) - logsumexp(s) because Σ_v p_t(v) = 1; this avoids
        # materialising a second [T, V] log-softmax tensor.
        rows.append(torch.logsumexp(student, dim=-1) - (teacher_probs * student).sum(dim=-1))
    if not rows:
        return torch.zeros(labels.shape[0], dtype=torch.float32, device=student_logits.device)
    per_token = torch.stack(rows).masked_fill(~mask, 0.0)
    return per_token.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
