"""``stage.train.gradient_checkpointing``: layers are recomputed in the backward pass, training is unchanged."""

from __future__ import annotations

import pytest
import torch

from alignment.models.loading import enable_gradient_checkpointing
from tests.test_joint_train import STEPS, assert_same_training, train
from tests.test_prefix_sharing import VOCAB, tiny_llama


def layer_calls(model, checkpointing: bool) -> int:
    """MLP forward calls of one training forward + backward (the forward method is wrapped: module hooks do not
    fire during a non-reentrant recompute)."""
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    calls = []
    for layer in model.model.layers:
        def counted(*args, forward=layer.mlp.forward, **kwargs):
            calls.append(1)
            return forward(*args, **kwargs)

        layer.mlp.forward = counted
    ids = torch.randint(1, VOCAB, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    return len(calls)


def test_checkpointing_recomputes_each_layer_in_backward():
    layers = len(tiny_llama("sdpa").model.layers)
    assert layer_calls(tiny_llama("sdpa"), checkpointing=False) == layers
    assert layer_calls(tiny_llama("sdpa"), checkpointing=True) == 2 * layers


def count_training_forwards(monkeypatch) -> list[int]:
    """Patch the stage's ``build_policy`` so the policy's first MLP counts its forward calls made in train mode
    with gradients on: the training forwards, plus their recomputation when checkpointing is active."""
    import stages.builders.training as train_parts

    calls: list[int] = []
    build_policy = train_parts.build_policy

    def counting_build_policy(*args, **kwargs):
        model, reference, kind = build_policy(*args, **kwargs)
        mlp = next(module for name, module in model.named_modules() if name.endswith("layers.0.mlp"))

        def counted(*inner, forward=mlp.forward, **inner_kwargs):
            if mlp.training and torch.is_grad_enabled():
                calls.append(1)
            return forward(*inner, **inner_kwargs)

        mlp.forward = counted
        return model, reference, kind

    monkeypatch.setattr(train_parts, "build_policy", counting_build_policy)
    return calls


@pytest.mark.parametrize("lora", [False, True])
def test_checkpointed_training_equals_plain_training(world_run_dir, monkeypatch, lora):
    calls = count_training_forwards(monkeypatch)
    extra = ("model.lora.enabled=true", "model.lora.r=4") if lora else ()
    plain, checkpointed = world_run_dir("plain"), world_run_dir("checkpointed")
    train(plain, *STEPS, *extra)
    plain_calls = len(calls)
    assert plain_calls == 6  # one forward per optimizer step (ALRIGHT trains one objective per step)
    train(checkpointed, *STEPS, *extra, "stage.train.gradient_checkpointing=true")
    assert len(calls) - plain_calls == 2 * plain_calls  # each forward recomputed in the backward pass
    assert_same_training(plain, checkpointed, tol=1e-5)
