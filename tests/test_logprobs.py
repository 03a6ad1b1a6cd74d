"""Tests for alignment.logprobs: shift convention, masking, dtype, memory-lean path vs naive, KD loss."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.logprobs import (
    IGNORE_INDEX,
    sequence_logprobs,
    shifted_response_mask,
    token_kl_to_teacher,
    token_logprobs,
)


def _hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """B=2, T=3, V=3. logits[:, t] predicts labels[:, t + 1]; logits[:, 2] predicts nothing."""
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [50.0, -50.0, 9.0]],
            [[7.0, 7.0, 7.0], [0.0, 0.0, math.log(2.0)], [-50.0, 50.0, 0.0]],
        ]
    )
    labels = torch.tensor([[IGNORE_INDEX, 0, 1], [IGNORE_INDEX, IGNORE_INDEX, 2]])
    return logits, labels


def test_token_logprobs_hand_computed_with_shift_and_mask() -> None:
    logits, labels = _hand_example()
    out = token_logprobs(logits, labels)
    # Row 0: label 0 under uniform logits -> log(1/3); label 1 under [1, 0, 0] -> 0 - log(e + 2).
    # Row 1: position 1 is ignored -> 0; label 2 under [0, 0, ln 2] -> log(2 / (1 + 1 + 2)) = log(0.5).
    expected = torch.tensor(
        [[math.log(1.0 / 3.0), -math.log(math.e + 2.0)], [0.0, math.log(0.5)]], dtype=torch.float32
    )
    assert out.shape == (2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_token_logprobs_matches_naive_log_softmax_gather() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=generator) * 3.0
    labels = torch.randint(0, 11, (3, 6), generator=generator)
    labels[0, :3] = IGNORE_INDEX  # prompt
    labels[2, 4:] = IGNORE_INDEX  # padding
    naive = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    expected = naive.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    torch.testing.assert_close(token_logprobs(logits, labels), expected)
    assert torch.equal(shifted_response_mask(labels), mask)


def test_token_logprobs_bfloat16_logits_computed_in_float32() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 7, generator=generator) * 4.0).to(torch.bfloat16)
    labels = torch.randint(0, 7, (2, 5), generator=generator)
    out = token_logprobs(logits, labels)
    expected = (
        torch.log_softmax(logits.float()[:, :-1], dim=-1).gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1)
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_masked_positions_get_no_gradient() -> None:
    logits, labels = _hand_example()
    logits.requires_grad_(True)
    token_logprobs(logits, labels).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # Row 1, position 0 predicts an ignored label and the last position predicts nothing.
    assert torch.all(logits.grad[1, 0] == 0) and torch.all(logits.grad[:, 2] == 0)
    assert torch.any(logits.grad[0, 0] != 0)


def test_sequence_logprobs_sum_count_mean() -> None:
    logits, labels = _hand_example()
    labels = torch.cat([labels, torch.full((1, 3), IGNORE_INDEX)])  # a row with no response tokens
    logits = torch.cat([logits, torch.zeros(1, 3, 3)])
    out = sequence_logprobs(logits, labels)
    row0 = math.log(1.0 / 3.0) - math.log(math.e + 2.0)
    torch.testing.assert_close(out.sum, torch.tensor([row0, math.log(0.5), 0.0]))
    assert out.count.tolist() == [2, 1, 0] and out.count.dtype == torch.int64
    torch.testing.assert_close(out.mean, torch.tensor([row0 / 2.0, math.log(0.5), 0.0]))


def test_single_position_sequences_have_no_predicted_tokens() -> None:
    out = sequence_logprobs(torch.zeros(2, 1, 4), torch.tensor([[1], [2]]))
    assert out.count.tolist() == [0, 0] and out.sum.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("logits_shape", "labels", "message"),
    [
        ((2, 3, 4), torch.tensor([[0, 1, 4], [0, 1, 2]]), "outside"),
        ((2, 3, 4), torch.tensor([[0, -1, 2], [0, 1, 2]]), "outside"),
        ((2, 3, 4), torch.zeros(2, 4, dtype=torch.long), "labels must have shape"),
        ((2, 3), torch.zeros(2, 3, dtype=torch.long), r"\[B, T, V\]"),
        ((2, 3, 4), torch.zeros(2, 3), "integer"),
    ],
)
def test_token_logprobs_rejects_bad_input(
    logits_shape: tuple[int, ...], labels: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        token_logprobs(torch.zeros(logits_shape), labels)


def _cross_entropy(teacher: list[float], student: list[float]) -> float:
    """−Σ_v p_teacher(v) log p_student(v) written out with math."""
    teacher_norm = sum(math.exp(t) for t in teacher)
    student_log_norm = math.log(sum(math.exp(s) for s in student))
    return -sum(
        math.exp(t) / teacher_norm * (s - student_log_norm) for t, s in zip(teacher, student, strict=True)
    )


def test_kd_loss_equals_hand_computed_cross_entropy_on_two_tokens() -> None:
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]], requires_grad=True)
    teacher = torch.tensor([[[0.0, 1.0], [math.log(3.0), 0.0], [-9.0, 9.0]]], requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    # Token 1: p_t = (1/(1+e), e/(1+e)), log p_s = (1, 0) - log(e + 1).
    # Token 2: p_t = (3/4, 1/4),         log p_s = (0, 2) - log(1 + e^2).
    token_1 = -(1 / (1 + math.e)) * (1 - math.log(math.e + 1)) - (math.e / (1 + math.e)) * (
        0 - math.log(math.e + 1)
    )
    token_2 = -0.75 * (0 - math.log(1 + math.e**2)) - 0.25 * (2 - math.log(1 + math.e**2))
    assert token_1 == pytest.approx(_cross_entropy([0.0, 1.0], [1.0, 0.0]))
    out = token_kl_to_teacher(student, teacher, labels)
    torch.testing.assert_close(out, torch.tensor([(token_1 + token_2) / 2.0]))
    out.sum().backward()
    assert teacher.grad is None and student.grad is not None and torch.isfinite(student.grad).all()


def test_kd_loss_masks_prompt_and_is_teacher_entropy_when_student_equals_teacher() -> None:
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    out = token_kl_to_teacher(logits, logits, labels)
    p = math.exp(2.0) / (math.exp(2.0) + math.exp(-1.0))
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    # Cross-entropy = KL + H(teacher): KL vanishes, the teacher-entropy constant remains; empty row -> 0.
    torch.testing.assert_close(out, torch.tensor([entropy, 0.0]))


def test_kd_loss_requires_matching_vocabularies() -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        token_kl_to_teacher(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long))
