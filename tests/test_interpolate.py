"""Linear weight interpolation of two models of the same base: endpoints, the midpoint, adapters, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignment.models.interpolate import interpolate_models, interpolate_state_dicts
from alignment.models.loading import LoraSpec, add_lora, load_causal_lm
from alignment.world.tiny_model import build_tiny_model, save_model_dir
from alignment.world.tokenizer import train_tokenizer

TEXTS = ["the quick brown fox", "jumps over the lazy dog", "a small red apple", "two large blue stones"] * 20


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("interp")
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    a = save_model_dir(build_tiny_model("tiny", tokenizer, seed=1), tokenizer, root / "a")
    b = save_model_dir(build_tiny_model("tiny", tokenizer, seed=2), tokenizer, root / "b")
    return a, b


def test_state_dicts_mix_linearly_and_refuse_other_architectures() -> None:
    a, b = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor([7])}, {"w": torch.tensor([3.0, -1.0]), "n": torch.tensor([7])}
    assert torch.equal(interpolate_state_dicts(a, b, 0.25)["w"], torch.tensor([2.5, 0.0]))  # 0.25·a + 0.75·b
    assert torch.equal(interpolate_state_dicts(a, b, 1.0)["w"], a["w"])
    assert torch.equal(interpolate_state_dicts(a, b, 0.5)["n"], a["n"])  # integer buffers are copied
    with pytest.raises(ValueError, match="different parameters"):
        interpolate_state_dicts(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="shapes"):
        interpolate_state_dicts(a, {**b, "w": torch.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        interpolate_state_dicts(a, b, 1.5)


def test_models_interpolate_into_a_normal_directory(bases: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = bases
    for alpha in (0.0, 1.0):
        out = interpolate_models(a, b, alpha, tmp_path / f"mix-{alpha}")
        expected = load_causal_lm(str(a if alpha == 1.0 else b)).state_dict()
        for name, value in load_causal_lm(str(out)).state_dict().items():
            torch.testing.assert_close(value, expected[name], atol=0, rtol=0)
    middle = load_causal_lm(str(interpolate_models(a, b, 0.5, tmp_path / "mix-half"))).state_dict()
    left, right = load_causal_lm(str(a)).state_dict(), load_causal_lm(str(b)).state_dict()
    for name, value in middle.items():
        torch.testing.assert_close(value, (left[name] + right[name]) / 2, atol=1e-6, rtol=0)
    assert (tmp_path / "mix-half" / "tokenizer.json").is_file()
    with pytest.raises(FileExistsError):
        interpolate_models(a, b, 0.5, tmp_path / "mix-half")  # never overwrites


def test_two_adapters_of_one_base_mix_their_weight_deltas(bases: tuple[Path, Path], tmp_path: Path) -> None:
    base = bases[0]
    deltas = []
    for seed, name in ((3, "adapter-a"), (4, "adapter-b")):
        torch.manual_seed(seed)
        model = add_lora(load_causal_lm(str(base)), LoraSpec(r=4, alpha=8))
        for parameter in model.parameters():
            if parameter.requires_grad:  # move both LoRA factors off their zero initialisation
                parameter.data.normal_(0, 0.05)
        model.save_pretrained(tmp_path / name)
        deltas.append(tmp_path / name)
    mixed = load_causal_lm(str(interpolate_models(deltas[0], deltas[1], 0.25, tmp_path / "mixed"))).state_dict()
    merged = [load_causal_lm(str(d)).state_dict() for d in deltas]  # each adapter merged onto the base
    for name, value in mixed.items():
        torch.testing.assert_close(value, 0.25 * merged[0][name] + 0.75 * merged[1][name], atol=1e-6, rtol=0)
