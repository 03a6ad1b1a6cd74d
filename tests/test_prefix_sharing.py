"""Prefix-shared preference forward: the same per-sequence log-probs as the concatenated forward, for the
policy and the reference, in SDPA and eager attention; identical losses through the joint trainer."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignment.data.collate import collate_preference, collate_prefix_shared, prefix_shared_logps
from alignment.data.tokenize import TokenizedPair
from alignment.losses import LossParams, LossType
from alignment.train.components import PreferenceComponent, model_reference
from alignment.train.prefix_forward import (
    concatenated_forward,
    kept_logit_positions,
    pair_count,
    pair_logps,
    prefix_shared_forward,
)

VOCAB = 48


def tiny_llama(attn: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                         pad_token_id=0)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn).eval()


def random_pairs(count: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(low: int, high: int) -> list[int]:
        return [rng.randrange(1, VOCAB) for _ in range(rng.randint(low, high))]

    return [TokenizedPair(f"p{i}", ids(1, 9), ids(1, 7), ids(1, 7)) for i in range(count)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_shared_logps_equal_the_concatenated_forward(attn):
    model, pairs = tiny_llama(attn), random_pairs(6)
    with torch.no_grad():
        shared = prefix_shared_forward(model, collate_prefix_shared(pairs, pad_id=0))
        concatenated = concatenated_forward(model, collate_preference(pairs, pad_id=0))
    torch.testing.assert_close(shared.chosen, concatenated.chosen, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(shared.rejected, concatenated.rejected, atol=1e-5, rtol=1e-6)
    assert shared.chosen_lengths.tolist() == [len(p.chosen_ids) for p in pairs]
    assert torch.equal(shared.rejected_lengths, concatenated.rejected_lengths)
    # a real difference between chosen and rejected is seen (the mask does not leak chosen into rejected)
    assert not torch.allclose(shared.chosen, shared.rejected)


def test_rejected_tokens_never_see_the_chosen_response():
    model, pairs = tiny_llama("sdpa"), random_pairs(1, seed=3)
    other = [TokenizedPair("q", pairs[0].prompt_ids, [5] * len(pairs[0].chosen_ids), pairs[0].rejected_ids)]
    with torch.no_grad():
        first = prefix_shared_forward(model, collate_prefix_shared(pairs, pad_id=0))
        second = prefix_shared_forward(model, collate_prefix_shared(other, pad_id=0))
    torch.testing.assert_close(first.rejected, second.rejected, atol=1e-6, rtol=0)


def test_pair_logps_dispatches_and_the_reference_accepts_both_layouts():
    policy, reference, pairs = tiny_llama("sdpa"), tiny_llama("sdpa", seed=1), random_pairs(4, seed=5)
    shared, concatenated = collate_prefix_shared(pairs, pad_id=0), collate_preference(pairs, pad_id=0)
    assert pair_count(shared) == pair_count(concatenated) == 4
    ref = model_reference(reference)
    for left, right in zip(ref(shared), ref(concatenated), strict=True):
        torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-6)
    component = PreferenceComponent(LossType("dpo"), LossParams(beta=0.1), ref)
    loss_shared, _ = component.loss(policy, shared)
    loss_concatenated, _ = component.loss(policy, concatenated)
    assert float(loss_shared.detach()) == pytest.approx(float(loss_concatenated.detach()), abs=1e-6)
    with torch.no_grad():
        assert pair_logps(policy, shared).chosen.shape == (4,)


def test_gradients_match_between_layouts():
    pairs = random_pairs(3, seed=7)
    grads = []
    for collate in (collate_prefix_shared, collate_preference):
        model = tiny_llama("sdpa")
        component = PreferenceComponent(LossType("simpo"), LossParams(beta=2.0, gamma=0.5), None)
        loss, _ = component.loss(model, collate(pairs, pad_id=0))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_the_output_layer_runs_only_where_a_response_token_is_predicted():
    """Long shared prompts: the head sees K < T positions, and the log-probs equal those from full logits."""
    model = tiny_llama("sdpa")
    pairs = [TokenizedPair("a", list(range(1, 21)), [3, 4], [5]), TokenizedPair("b", list(range(1, 16)), [6], [7, 8])]
    batch = collate_prefix_shared(pairs, pad_id=0)
    kept, positions = kept_logit_positions(batch)
    # pair a: chosen from 19 and 20, rejected from 19 (the last prompt token); pair b: chosen from 14, rejected
    # from 14 and 16
    assert kept.tolist() == [14, 16, 19, 20]
    seen = []
    model.lm_head.register_forward_hook(lambda _module, _inputs, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        selective = prefix_shared_forward(model, batch)
        full = prefix_shared_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         position_ids=batch["position_ids"]).logits, batch)
    assert seen[0] == (2, 4, VOCAB) and batch["input_ids"].shape[1] == 23
    torch.testing.assert_close(selective.chosen, full[0], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(selective.rejected, full[1], atol=1e-5, rtol=1e-6)
    assert positions[batch["chosen_mask"] | batch["rejected_mask"]].max() < kept.numel()


def test_unpaired_loss_refuses_the_prefix_shared_layout():
    model, pairs = tiny_llama("sdpa"), random_pairs(2)
    component = PreferenceComponent(LossType("kto"), LossParams(), model_reference(model))
    with pytest.raises(ValueError, match="prefix sharing off"):
        component.loss(model, collate_prefix_shared(pairs, pad_id=0))


def test_prefix_sharing_gives_the_same_training(world_run_dir):
    from tests.test_joint_train import assert_same_training, train

    steps = ("objective=preference", "stage.train.max_steps=3", "stage.train.eval_every=3")
    plain, shared = world_run_dir("plain"), world_run_dir("shared")
    train(plain, *steps)
    train(shared, *steps, "stage.train.prefix_sharing=true")
    assert_same_training(plain, shared, tol=1e-4)
