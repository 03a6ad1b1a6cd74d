"""A short plain causal-LM training loop that turns a freshly built tiny model into a mediocre "base model".

This is deliberately not the project's main training loop (no objectives, no checkpoints): it only exists to
give the embedded world a base model that knows the chat format but answers many tasks wrongly.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

IGNORE_INDEX = -100


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text; the texts already carry BOS/EOS from the chat template, so none are added."""
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return [list(ids) for ids in encoded if len(ids) >= 2]


def _collate(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``sequences`` to one (batch, max_len) tensor; labels are the ids with padding ignored."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return input_ids, attention_mask, labels


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0.1 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    max_length: int = 64,
    show_progress: bool = True,
) -> list[float]:
    """Train ``model`` in place on ``texts`` with next-token prediction; return the loss of every step.

    Batches are drawn uniformly at random (with a generator seeded by ``seed``) and right-padded; AdamW with
    linear warm-up and cosine decay. The same model, texts and seed give the same loss curve. The defaults
    take the ``tiny`` model to the right answer format with mediocre accuracy; learning rates of 2e-3 and
    above measurably delay learning to copy words (a loss plateau for 500+ steps), so keep ``lr`` <= 1e-3.
    """
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must both be positive")
    sequences = _tokenize(tokenizer, texts, max_length)
    if not sequences:
        raise ValueError("pretrain_lm needs at least one text of two or more tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine_lr(s, steps, warmup))
    model.train()
    losses: list[float] = []
    progress = tqdm(range(steps), desc="pretrain", disable=not show_progress)
    for _ in progress:
        picks = torch.randint(len(sequences), (batch_size,), generator=generator).tolist()
        input_ids, attention_mask, labels = _collate([sequences[i] for i in picks], pad_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
