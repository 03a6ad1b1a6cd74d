"""Collators (SFT, concatenated preference, prefix-shared preference) and the length-bucketed batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment.data.collate import (
    LengthBucketedSampler,
    additive_mask,
    collate_preference,
    collate_prefix_shared,
    collate_sft,
    prefix_shared_logps,
)
from alignment.data.tokenize import TokenizedPair, TokenizedSFT

X = -100  # ignored label


def sft_example(ids: list[int], prompt_length: int, label: bool | None = None) -> TokenizedSFT:
    response = len(ids) - prompt_length
    return TokenizedSFT(id=str(ids), input_ids=ids, labels=[X] * prompt_length + ids[prompt_length:],
                        loss_mask=[0] * prompt_length + [1] * response, prompt_length=prompt_length, label=label)


# pair 1: P=2, C=2, R=3; pair 2: P=1, C=2, R=1
PAIRS = [
    TokenizedPair(id="a", prompt_ids=[10, 11], chosen_ids=[12, 1], rejected_ids=[13, 14, 1]),
    TokenizedPair(id="b", prompt_ids=[10], chosen_ids=[15, 1], rejected_ids=[1]),
]


def test_collate_sft_pads_right_and_masks_labels() -> None:
    batch = collate_sft([sft_example([0, 5, 6, 7, 1], 3), sft_example([0, 8, 1], 1)], pad_id=2)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7, 1], [0, 8, 1, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[X, X, X, 7, 1], [X, 8, 1, X, X]]
    assert "desirable" not in batch
    kto = collate_sft([sft_example([0, 5, 1], 1, True), sft_example([0, 6, 1], 1, False)], pad_id=2)
    assert kto["desirable"].tolist() == [True, False]
    with pytest.raises(ValueError, match="empty batch"):
        collate_sft([], pad_id=2)


def test_collate_preference_stacks_chosen_then_rejected() -> None:
    batch = collate_preference(PAIRS, pad_id=0)
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, 1, 0],
        [10, 15, 1, 0, 0],
        [10, 11, 13, 14, 1],
        [10, 1, 0, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[X, X, 12, 1, X], [X, 15, 1, X, X], [X, X, 13, 14, 1], [X, 1, X, X, X]]
    assert batch["response_lengths"].tolist() == [2, 2, 3, 1]
    assert batch["prompt_lengths"].tolist() == [2, 1, 2, 1]


def test_prefix_shared_layout_entry_by_entry() -> None:
    batch = collate_prefix_shared(PAIRS, pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 1, 13, 14, 1], [10, 15, 1, 1, 0, 0, 0]]
    assert batch["attention_mask"].shape == (2, 1, 7, 7) and batch["attention_mask"].dtype == torch.bool
    # pair 1: keys 0-1 prompt, 2-3 chosen, 4-6 rejected; rejected queries never see chosen keys
    assert batch["attention_mask"][0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 1, 1, 1],
    ]
    # pair 2: key 0 prompt, 1-2 chosen, 3 rejected, 4-6 padding (attends only to itself)
    assert batch["attention_mask"][1, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4], [0, 1, 2, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[X, X, 12, 1, 13, 14, 1], [X, 15, 1, 1, X, X, X]]
    # the first rejected token is predicted from the last prompt token, not from the last chosen token
    assert batch["logit_positions"].tolist() == [[0, 0, 1, 2, 1, 4, 5], [0, 0, 1, 0, 0, 0, 0]]
    assert batch["chosen_mask"].int().tolist() == [[0, 0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0]]
    assert batch["rejected_mask"].int().tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0]]
    assert batch["padding_mask"].tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert batch["prompt_lengths"].tolist() == [2, 1]
    assert batch["chosen_lengths"].tolist() == [2, 2] and batch["rejected_lengths"].tolist() == [3, 1]


def test_additive_mask_is_zero_where_allowed() -> None:
    mask = torch.tensor([[[[True, False], [True, True]]]])
    additive = additive_mask(mask, torch.float32)
    minimum = torch.finfo(torch.float32).min
    assert additive.tolist() == [[[[0.0, minimum], [0.0, 0.0]]]]


def test_prefix_shared_logps_pick_the_right_logits() -> None:
    # logits[b, t, v] = 100 * b + 10 * t + v, so log_softmax is a fixed shift of the row and each gathered entry
    # reveals which (position, token) it came from.
    batch = collate_prefix_shared(PAIRS[:1], pad_id=0)
    vocab = 16
    logits = (10.0 * torch.arange(7).view(1, 7, 1) + torch.arange(vocab).view(1, 1, vocab)).float()
    log_norm = torch.logsumexp(torch.arange(vocab).float(), dim=0).item()  # same for every position
    chosen, rejected = prefix_shared_logps(logits, batch)
    # chosen tokens 12 (from position 1), 1 (from 2); rejected 13 (from 1), 14 (from 4), 1 (from 5)
    assert chosen.item() == pytest.approx((12 - log_norm) + (1 - log_norm), abs=1e-4)
    assert rejected.item() == pytest.approx((13 - log_norm) + (14 - log_norm) + (1 - log_norm), abs=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_prefix_shared_forward_matches_the_concatenated_forward(attention: str) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()
    assert model.config._attn_implementation == attention
    pairs = [*PAIRS, TokenizedPair(id="c", prompt_ids=[3, 4, 5], chosen_ids=[6, 7, 8, 1], rejected_ids=[9, 1])]
    with torch.no_grad():
        flat = collate_preference(pairs, pad_id=0)
        logits = model(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"]).logits
        token_logps = torch.log_softmax(logits[:, :-1], -1).gather(2, flat["labels"][:, 1:].clamp(min=0)
                                                                    .unsqueeze(-1)).squeeze(-1)
        sums = (token_logps * (flat["labels"][:, 1:] != X)).sum(1)
        shared = collate_prefix_shared(pairs, pad_id=0)
        mask = shared["attention_mask"] if attention == "sdpa" else additive_mask(shared["attention_mask"])
        shared_logits = model(input_ids=shared["input_ids"], attention_mask=mask,
                              position_ids=shared["position_ids"]).logits
        chosen, rejected = prefix_shared_logps(shared_logits, shared)
    assert torch.allclose(chosen, sums[:3], atol=1e-5)
    assert torch.allclose(rejected, sums[3:], atol=1e-5)


# --- LengthBucketedSampler ---------------------------------------------------------------------------------


def lengths_for_test(count: int = 203, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(1, 300, size=count).tolist()


def padding(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)


def test_every_index_exactly_once_per_epoch() -> None:
    lengths = lengths_for_test()
    sampler = LengthBucketedSampler(lengths, batch_size=8, window=4, seed=1)
    for _ in range(3):
        batches = list(sampler)
        assert len(batches) == len(sampler) == 26  # 203 = 25 * 8 + 3
        assert sorted(i for batch in batches for i in batch) == list(range(203))
        assert sorted(len(batch) for batch in batches)[0] == 3
    dropping = LengthBucketedSampler(lengths, batch_size=8, window=4, seed=1, drop_last=True)
    batches = list(dropping)
    assert len(batches) == len(dropping) == 25 and all(len(batch) == 8 for batch in batches)
    assert len({i for batch in batches for i in batch}) == 200


def test_order_depends_only_on_seed_and_epoch() -> None:
    lengths = lengths_for_test()
    first, second = (LengthBucketedSampler(lengths, 8, 4, seed=1) for _ in range(2))
    epoch0 = list(first)
    assert list(second) == epoch0
    epoch1 = list(first)  # a full pass advances the epoch
    assert epoch1 != epoch0 and first.epoch_batches(1) == epoch1
    second.set_epoch(0)
    assert list(second) == epoch0
    assert LengthBucketedSampler(lengths, 8, 4, seed=2).epoch_batches(0) != epoch0


def test_bucketing_reduces_padding_against_random_batches() -> None:
    lengths = lengths_for_test(count=512)
    bucketed = LengthBucketedSampler(lengths, batch_size=8, window=16, seed=3).epoch_batches(0)
    random_batches = LengthBucketedSampler(lengths, batch_size=8, window=1, seed=3).epoch_batches(0)
    assert padding(lengths, bucketed) < 0.25 * padding(lengths, random_batches)


def test_resume_mid_epoch_continues_with_the_exact_next_batch() -> None:
    lengths = lengths_for_test()
    reference = LengthBucketedSampler(lengths, 8, 4, seed=5)
    expected = list(reference) + list(reference)  # epochs 0 and 1
    interrupted = LengthBucketedSampler(lengths, 8, 4, seed=5)
    iterator = iter(interrupted)
    seen = [next(iterator) for _ in range(7)]
    state = interrupted.state_dict()
    assert (state["epoch"], state["position"]) == (0, 7)
    resumed = LengthBucketedSampler(lengths, 8, 4, seed=5)
    resumed.load_state_dict(state)
    assert seen + list(resumed) + list(resumed) == expected
    with pytest.raises(ValueError, match="seed=5 but this sampler has 6"):
        LengthBucketedSampler(lengths, 8, 4, seed=6).load_state_dict(state)
    # a loader that prefetched ahead reports what training actually consumed
    assert interrupted.state_dict(batches_consumed=5)["position"] == 5


def test_replicas_split_the_batches_between_ranks() -> None:
    lengths = lengths_for_test(count=50)  # 7 batches of 8 (the last has 2) -> padded to 8 by wrapping
    ranks = [LengthBucketedSampler(lengths, 8, 2, seed=0, num_replicas=2, rank=r) for r in range(2)]
    per_rank = [list(sampler) for sampler in ranks]
    assert [len(batches) for batches in per_rank] == [len(sampler) for sampler in ranks] == [4, 4]
    assert sorted({i for batches in per_rank for batch in batches for i in batch}) == list(range(50))


def test_sampler_drives_a_dataloader() -> None:
    examples = [sft_example([0] + [5] * n + [1], 1) for n in range(1, 20)]
    sampler = LengthBucketedSampler([len(e.input_ids) for e in examples], batch_size=4, window=2, seed=0)
    loader: torch.utils.data.DataLoader[TokenizedSFT] = torch.utils.data.DataLoader(
        examples,  # type: ignore[arg-type]
        batch_sampler=sampler,
        collate_fn=lambda batch: collate_sft(batch, pad_id=2),
    )
    batches = list(loader)
    assert len(batches) == 5 and sum(batch["input_ids"].shape[0] for batch in batches) == 19
