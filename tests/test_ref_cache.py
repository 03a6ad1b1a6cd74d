"""Reference log-prob cache: values equal a live reference forward, rows are joined by id, a second run reuses
the file, and training with the cache equals training with a live reference (no reference model kept)."""

from __future__ import annotations

import gc
import weakref
from functools import partial

import pytest
import torch

from alignment.data.collate import collate_preference, collate_prefix_shared
from alignment.data.tokenize import TokenizedPair
from alignment.train.batches import WithIds
from alignment.train.components import model_reference
from alignment.train.ref_cache import (
    CachedReference,
    cache_key,
    compute_reference_table,
    load_or_build,
    load_table,
    pairs_fingerprint,
    save_table,
    unique_pairs,
)
from pipeline.artifacts import read_manifest
from pipeline.layout import stage_dir
from tests.test_prefix_sharing import random_pairs, tiny_llama


def test_cached_values_equal_a_live_reference_forward_joined_by_id():
    reference, pairs = model_reference(tiny_llama("sdpa")), random_pairs(7)
    table = compute_reference_table(reference, pairs, batch_size=3, collate=WithIds(partial(collate_preference,
                                                                                              pad_id=0)))
    assert sorted(table) == sorted(p.id for p in pairs)
    shuffled = [pairs[i] for i in (4, 0, 6, 2)]  # another grouping and order than the cache pass
    for collate in (collate_preference, collate_prefix_shared):
        batch = WithIds(partial(collate, pad_id=0))(shuffled)
        live, cached = reference(batch), CachedReference(table)(batch)
        for left, right in zip(cached, live, strict=True):
            torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-6)


def test_the_cache_refuses_a_batch_without_ids_or_with_unknown_ids():
    cached = CachedReference({"a": (-1.0, -2.0)})
    batch = collate_preference(random_pairs(1), pad_id=0)
    with pytest.raises(ValueError, match="ids"):
        cached(batch)
    with pytest.raises(KeyError, match="not in the reference cache"):
        cached({**batch, "ids": ["b"]})
    chosen, rejected = cached({**batch, "ids": ["a"]})
    assert chosen.tolist() == [-1.0] and rejected.tolist() == [-2.0]


def test_save_is_atomic_and_load_or_build_reuses_the_file(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": (-1.5, -2.25), "y": (-0.5, -3.0)}

    first, reused_first = load_or_build(tmp_path, "k1", build)
    second, reused_second = load_or_build(tmp_path, "k1", build)
    assert (reused_first, reused_second, len(calls)) == (False, True, 1)
    assert first == second == {"x": (-1.5, -2.25), "y": (-0.5, -3.0)}
    assert [p.name for p in tmp_path.iterdir()] == ["k1.safetensors"]  # no temporary file left behind
    save_table(tmp_path / "other.safetensors", {}, "k2")
    assert load_table(tmp_path / "other.safetensors") == {}


def test_cache_key_changes_with_data_reference_tokenizer_and_settings():
    pairs = random_pairs(3)
    base = cache_key("ref", "tok", pairs, {"max_length": 64})
    assert base == cache_key("ref", "tok", list(reversed(pairs)), {"max_length": 64})  # order-free
    changed = [TokenizedPair(pairs[0].id, pairs[0].prompt_ids, pairs[0].chosen_ids + [3], pairs[0].rejected_ids),
               *pairs[1:]]
    others = {cache_key("ref2", "tok", pairs, {"max_length": 64}), cache_key("ref", "tok2", pairs, {"max_length": 64}),
              cache_key("ref", "tok", pairs, {"max_length": 32}), cache_key("ref", "tok", changed, {"max_length": 64})}
    assert base not in others and len(others) == 4
    assert pairs_fingerprint(pairs + pairs[:1]) == pairs_fingerprint(pairs)


def test_two_different_pairs_with_one_id_are_refused():
    pair = random_pairs(1)[0]
    clash = TokenizedPair(pair.id, pair.prompt_ids, pair.chosen_ids + [1], pair.rejected_ids)
    assert unique_pairs([pair, pair]) == [pair]
    with pytest.raises(ValueError, match="share the id"):
        unique_pairs([pair, clash])


def test_training_with_the_cache_equals_a_live_reference_and_frees_it(world_run_dir, monkeypatch):
    import alignment.models.loading as loading
    import alignment.train.ref_cache as ref_cache
    from tests.test_joint_train import assert_same_training, train

    copies: list[weakref.ref] = []
    original_copy = loading.frozen_copy

    def tracked_copy(model):
        copy = original_copy(model)
        copies.append(weakref.ref(copy))
        return copy

    monkeypatch.setattr(loading, "frozen_copy", tracked_copy)
    steps = ("objective=preference", "stage.train.max_steps=3", "stage.train.eval_every=3")
    live, cached = world_run_dir("live"), world_run_dir("cached")
    train(live, *steps)
    manifest = train(cached, *steps, "stage.train.ref_cache=true")
    assert "computed cache" in manifest["metrics"]["reference"]
    gc.collect()
    assert len(copies) == 2 and copies[1]() is None  # the frozen reference of the cached run was freed
    assert_same_training(live, cached, tol=1e-5)
    assert len(list((cached / "cache" / "ref_logps").glob("*.safetensors"))) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(ref_cache, "compute_reference_table", no_recompute)
    again = train(cached, *steps, "stage.train.ref_cache=true", "stage.train.prefix_sharing=true", "force=true")
    assert "reused cache" in again["metrics"]["reference"]
    assert read_manifest(stage_dir(cached, 0, "joint_train"))["metrics"]["eval/pref_loss"] == pytest.approx(
        manifest["metrics"]["eval/pref_loss"], abs=1e-4)
