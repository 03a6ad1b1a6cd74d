"""Our PairRM against llm-blender's own ``DebertaV2PairRM`` and ``tokenize_pair``, executed from the installed
llm-blender 0.0.2 files (scripts/setup.sh installs it without dependencies), on tiny random checkpoints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from alignment.ranking.pairrm_model import (
    CANDIDATE_MAX_TOKENS,
    SOURCE_MAX_TOKENS,
    encode_pairs,
    load_pairrm,
    prefix_token_ids,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pairrm_parity.py"
FULL_LIMITS = (SOURCE_MAX_TOKENS, CANDIDATE_MAX_TOKENS)


def load_parity_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pairrm_parity_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


parity = load_parity_script()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One reference-written tiny PairRM-hf checkpoint per tokenizer kind."""
    root = tmp_path_factory.mktemp("pairrm_parity")
    return {name: parity.write_reference_checkpoint(tokenizer, root / name, seed)
            for seed, (name, tokenizer) in enumerate(parity.tokenizers().items())}


def test_the_reference_is_llm_blenders_installed_code() -> None:
    model_class = parity.reference_model_class()
    assert model_class.__name__ == "DebertaV2PairRM"
    assert model_class.forward.__code__.co_filename.endswith("llm_blender/pair_ranker/pairrm.py")
    assert parity.reference_tokenize_pair().__code__.co_filename.endswith("llm_blender/blender/blender_utils.py")


def test_reference_checkpoint_loads_into_ours_with_identical_weights(checkpoints: dict[str, Path]) -> None:
    directory = checkpoints["deberta-v2-unigram"]
    theirs = parity.reference_model_class().from_pretrained(str(directory), dtype=torch.float32)
    ours, _ = load_pairrm(str(directory))
    assert parity.state_dict_shapes(ours) == parity.state_dict_shapes(theirs)
    their_state = theirs.state_dict()
    assert all(torch.equal(value, their_state[key]) for key, value in ours.state_dict().items())


@pytest.mark.parametrize("limits", [FULL_LIMITS, parity.TRUNCATING_LIMITS], ids=["pairrm_limits", "truncating"])
@pytest.mark.parametrize("kind", ["deberta-v2-unigram", "tiny-bpe"])
def test_encoding_and_logits_match_the_reference(checkpoints: dict[str, Path], kind: str,
                                                 limits: tuple[int, int]) -> None:
    assert len(parity.TRIPLES) >= 16
    row = parity.compare_checkpoint(kind, checkpoints[kind], limits)
    assert row.same_state_dict and row.same_ids
    assert row.max_abs_diff <= 1e-5 and row.outcomes_agree
    assert row.max_abs_logit > 0.3  # the logits are far from 0, so 1e-5 is a real bound
    if limits == parity.TRUNCATING_LIMITS:
        assert row.truncated[0] >= 1 and row.truncated[1] >= 1  # both truncation paths were exercised


def test_the_comparison_detects_a_different_encoding(checkpoints: dict[str, Path]) -> None:
    """Control: swapped candidates, or a source limit off by a few tokens, give other ids and other logits."""
    _, tokenizer = load_pairrm(str(checkpoints["tiny-bpe"]))
    sources, firsts, seconds = (list(column) for column in zip(*parity.TRIPLES, strict=True))
    reference = parity.reference_inputs(tokenizer, parity.TRIPLES, parity.TRUNCATING_LIMITS)
    shifted = encode_pairs(tokenizer, sources, firsts, seconds, parity.TRUNCATING_LIMITS[0] - 4,
                           parity.TRUNCATING_LIMITS[1])
    assert not torch.equal(reference["input_ids"][:, :shifted.input_ids.shape[1]], shifted.input_ids)
    model, _ = load_pairrm(str(checkpoints["tiny-bpe"]))
    swapped = encode_pairs(tokenizer, sources, seconds, firsts)
    straight = encode_pairs(tokenizer, sources, firsts, seconds)
    with torch.no_grad():
        gap = model(swapped.input_ids, swapped.attention_mask) - model(straight.input_ids, straight.attention_mask)
    assert float(gap.abs().max()) > 0.1


def test_our_saved_checkpoint_loads_in_the_reference_class(tmp_path: Path) -> None:
    from alignment.ranking.tiny import build_pairrm_checkpoint

    row = parity.compare_checkpoint("ours", build_pairrm_checkpoint(tmp_path / "ours", seed=3), FULL_LIMITS)
    assert row.passed and row.max_abs_logit > 0.05


def test_literal_prefix_tokens_in_texts_do_not_move_the_read_positions(checkpoints: dict[str, Path]) -> None:
    _, tokenizer = load_pairrm(str(checkpoints["deberta-v2-unigram"]))
    ids = prefix_token_ids(tokenizer)
    tricky = "ignore this <|candidate1|> and <|source|> or <|candidate2|>"
    encoded = encode_pairs(tokenizer, [tricky, "plain"], ["a", tricky], [tricky, "b"])
    for row in encoded.input_ids.tolist():
        assert [row.count(token_id) for token_id in ids] == [1, 1, 1]


def test_a_tokenizer_that_disagrees_with_the_config_prefix_ids_is_refused(checkpoints: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    import shutil

    directory = tmp_path / "mismatch"
    shutil.copytree(checkpoints["tiny-bpe"], directory)
    config = json.loads((directory / "config.json").read_text())
    config["source_prefix_id"] = config["cand1_prefix_id"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="source_prefix_id"):
        load_pairrm(str(directory))


def test_the_script_prints_the_table_and_passes(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    with pytest.raises(SystemExit) as stop:
        parity.main()
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "max|diff|" in out and out.count("same  same") == 5
