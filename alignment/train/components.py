"""The objectives a joint run combines: SFT, a preference loss, or knowledge distillation.

Each component turns one batch into a scalar training loss (its own reduction) plus logged values; the loss
functions themselves live in :mod:`alignment.losses` and return per-example values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from alignment.data.tokenize import IGNORE_INDEX
from alignment.logprobs import sequence_logprobs, token_kl_to_teacher
from alignment.losses import (
    LossOutput,
    LossParams,
    LossType,
    PreferenceInputs,
    preference_loss,
    sft_token_loss_sum,
)
from alignment.train.prefix_forward import is_prefix_shared, pair_logps

Batch = dict[str, Any]


class Component(Protocol):
    """One objective: ``name`` for logs, ``loss(model, batch)`` -> (scalar loss, floats to log)."""

    name: str

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


def forward_logits(model: Any, batch: Batch) -> torch.Tensor:
    """Causal-LM logits ``[B,T,V]`` of a padded batch (``input_ids``/``attention_mask [B,T]``)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@dataclass
class SFTComponent:
    """Supervised fine-tuning: token-mean cross-entropy over every response token of the batch (prompt masked)."""

    name: str = "sft"

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        summed = sft_token_loss_sum(forward_logits(model, batch), batch["labels"])
        loss = summed.loss_sum.sum() / summed.token_count.sum().clamp(min=1)
        return loss, {"sft_loss": float(loss.detach())}


# (chosen logps [B], rejected logps [B]) of the reference for a preference batch
ReferenceFn = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PreferenceComponent:
    """A paired preference loss on a concatenated ``[chosen; rejected]`` batch (``collate_preference``).

    ``reference`` returns the reference log-prob sums of the batch (a frozen model, the LoRA base with adapters
    disabled, or a cache); it is None for reference-free losses.
    """

    loss_type: LossType
    params: LossParams
    reference: ReferenceFn | None
    pad_id: int = 0
    name: str = "preference"

    def outputs(self, model: Any, batch: Batch) -> LossOutput:
        """Per-example preference losses and rewards of ``batch`` (concatenated or prefix-shared layout)."""
        if not self.loss_type.paired:
            if is_prefix_shared(batch):
                raise ValueError(f"loss {self.loss_type.value!r} is unpaired and needs the concatenated layout; "
                                 "turn prefix sharing off")
            logps = sequence_logprobs(forward_logits(model, batch), batch["labels"])
            return self._unpaired_outputs(model, batch, logps.sum, logps.count)
        policy = pair_logps(model, batch)
        inputs = PreferenceInputs(
            policy_chosen_logps=policy.chosen, policy_rejected_logps=policy.rejected,
            chosen_lengths=policy.chosen_lengths, rejected_lengths=policy.rejected_lengths,
        )
        if self.loss_type.needs_reference:
            if self.reference is None:
                raise ValueError(f"loss {self.loss_type.value!r} needs reference log-probs but none were given")
            inputs.reference_chosen_logps, inputs.reference_rejected_logps = self.reference(batch)
        return preference_loss(self.loss_type, self.params, inputs)

    def _unpaired_outputs(self, model: Any, batch: Batch, logps: torch.Tensor, lengths: torch.Tensor) -> LossOutput:
        """KTO on a pair batch: chosen rows are desirable completions, rejected rows undesirable; the KL
        reference point comes from mismatched (prompt, completion) rows of the same batch (no gradient)."""
        if self.reference is None:
            raise ValueError("KTO needs reference log-probs but none were given")
        half = logps.shape[0] // 2
        desirable = torch.arange(logps.shape[0], device=logps.device) < half
        reference = torch.cat(self.reference(batch))
        mismatched = mismatched_batch(batch, self.pad_id)
        with torch.no_grad():
            kl_policy = sequence_logprobs(forward_logits(model, mismatched), mismatched["labels"]).sum
        kl_reference = torch.cat(self.reference(mismatched))
        inputs = PreferenceInputs(policy_completion_logps=logps, reference_completion_logps=reference,
                                  completion_is_desirable=desirable, completion_lengths=lengths,
                                  kl_policy_logps=kl_policy, kl_reference_logps=kl_reference)
        return preference_loss(self.loss_type, self.params, inputs)

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.outputs(model, batch)
        loss = out.losses.mean()
        accuracy = float((out.chosen_rewards > out.rejected_rewards).float().mean())
        return loss, {"pref_loss": float(loss.detach()), "reward_accuracy": accuracy,
                      **{f"pref/{k}": v for k, v in out.metrics.items()}}


@dataclass
class KDComponent:
    """Knowledge distillation: token-level cross-entropy to a frozen teacher's distribution (BiPOST KD)."""

    teacher: Any
    name: str = "kd"

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            teacher_logits = forward_logits(self.teacher, batch)
        per_example = token_kl_to_teacher(forward_logits(model, batch), teacher_logits, batch["labels"])
        loss = per_example.mean()
        return loss, {"kd_loss": float(loss.detach())}


def mismatched_batch(batch: Batch, pad_id: int) -> Batch:
    """Each row's prompt followed by the NEXT row's response (cyclically): the unrelated completions KTO uses
    to estimate KL(π‖π_ref). ``batch`` is a ``collate_preference`` batch (``prompt_lengths``/``response_lengths``)."""
    ids, prompts, responses = batch["input_ids"], batch["prompt_lengths"].tolist(), batch["response_lengths"].tolist()
    rows = ids.shape[0]
    sequences, labels = [], []
    for row in range(rows):
        donor = (row + 1) % rows
        prompt = ids[row, : prompts[row]]
        response = ids[donor, prompts[donor]: prompts[donor] + responses[donor]]
        sequences.append(torch.cat([prompt, response]))
        labels.append(torch.cat([torch.full_like(prompt, IGNORE_INDEX), response]))
    width = max(len(s) for s in sequences)
    out = {"input_ids": torch.full((rows, width), pad_id, dtype=ids.dtype, device=ids.device),
           "attention_mask": torch.zeros((rows, width), dtype=torch.long, device=ids.device),
           "labels": torch.full((rows, width), IGNORE_INDEX, dtype=ids.dtype, device=ids.device)}
    for row, (sequence, label) in enumerate(zip(sequences, labels, strict=True)):
        out["input_ids"][row, : len(sequence)] = sequence
        out["attention_mask"][row, : len(sequence)] = 1
        out["labels"][row, : len(label)] = label
    return out


def model_reference(reference_model: Any) -> ReferenceFn:
    """Reference log-probs from a separate frozen model (either preference batch layout)."""

    @torch.no_grad()
    def reference(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # the frozen reference may live on another device than the batch (it is not prepared by accelerate)
        device = next(reference_model.parameters()).device
        logps = pair_logps(reference_model, {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                             for k, v in batch.items()})
        target = batch["input_ids"].device
        return logps.chosen.to(target), logps.rejected.to(target)

    return reference


def adapter_disabled_reference(peft_model: Any) -> ReferenceFn:
    """Reference log-probs from the LoRA base: the policy itself with its adapters switched off."""
    forward = model_reference(peft_model)

    def reference(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = peft_model.training
        peft_model.eval()  # dropout off for the reference pass
        try:
            with peft_model.disable_adapter():
                return forward(batch)
        finally:
            peft_model.train(was_training)

    return reference
