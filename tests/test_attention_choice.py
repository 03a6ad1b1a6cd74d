"""``model.attn_implementation=auto``: flash-attn only where it is installed, on CUDA and without a 4-D mask."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from alignment.models.loading import resolve_attn_implementation


def test_explicit_choices_pass_through():
    for name in ("sdpa", "eager", "flash_attention_2"):
        assert resolve_attn_implementation(name) == name
        assert resolve_attn_implementation(name, needs_4d_mask=True) == name


def test_auto_is_sdpa_on_this_machine():
    expected = "sdpa"
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        expected = "flash_attention_2"
    assert resolve_attn_implementation("auto") == expected
    assert resolve_attn_implementation("auto", needs_4d_mask=True) == "sdpa"


@pytest.mark.parametrize(("cuda", "installed", "needs_mask", "expected"), [
    (True, True, False, "flash_attention_2"),
    (True, True, True, "sdpa"),
    (True, False, False, "sdpa"),
    (False, True, False, "sdpa"),
])
def test_auto_decision(monkeypatch, cuda, installed, needs_mask, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" and installed else
                        (None if name == "flash_attn" else real_find_spec(name, *a)))
    assert resolve_attn_implementation("auto", needs_4d_mask=needs_mask) == expected


def test_config_accepts_auto_and_rejects_unknown_kernels():
    from stages.config.sections import ModelConfig

    assert ModelConfig().attn_implementation == "auto"
    assert ModelConfig(attn_implementation="auto").validate() == []
    problems = ModelConfig(attn_implementation="flash3").validate()
    assert any("model.attn_implementation" in problem for problem in problems)
