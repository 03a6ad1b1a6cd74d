"""Reference log-prob cache: values equal a live reference forward, rows are joined by id, a second run reuses
the file, and training with the cache equals training with a live reference (no reference model kept).

The lazy store: rows are computed only when first used, equal the eager cache and a live reference exactly on
the same batches, are reused by later instances and ranks, and survive torn shards and crashes mid-append."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from alignment.data.collate import collate_preference, collate_prefix_shared
from alignment.data.tokenize import TokenizedPair
from alignment.losses import LossParams, LossType
from alignment.train.batches import WithIds
from alignment.train.components import PreferenceComponent, model_reference
from alignment.train.ref_cache import (
    CachedReference,
    cache_key,
    compute_reference_table,
    load_or_build,
    load_table,
    pairs_fingerprint,
    reference_batches,
    save_table,
    unique_pairs,
)
from alignment.train.ref_store import LazyCachedReference, ShardStore, pair_content_hash, store_key
from pipeline.artifacts import read_manifest
from pipeline.layout import stage_dir
from stages.runner import run_stage
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


def test_training_with_the_lazy_cache_equals_live_and_eager_and_a_second_run_computes_nothing(world_run_dir):
    from tests.test_joint_train import assert_same_training, train

    steps = ("objective=preference", "stage.train.max_steps=3", "stage.train.eval_every=3")
    live, lazy, eager = world_run_dir("live"), world_run_dir("lazy"), world_run_dir("eager")
    train(live, *steps)
    first = train(lazy, *steps, "stage.train.ref_cache=true")["metrics"]
    assert "lazy reference log-probs" in first["reference"]
    assert_same_training(live, lazy, tol=1e-5)
    every = train(eager, *steps, "stage.train.ref_cache=true", "stage.train.ref_cache_eager=true")["metrics"]
    assert_same_training(lazy, eager, tol=1e-5)  # lazy and eager: the same losses and weights
    # lazily, only the pairs of 3 training batches and of the held-out batches were computed
    assert 0 < first["reference_cache"]["rows_computed"] < every["reference_cache"]["rows_computed"]
    again = train(lazy, *steps, "stage.train.ref_cache=true", "stage.train.prefix_sharing=true", "force=true")
    assert again["metrics"]["reference_cache"]["rows_computed"] == 0
    assert again["metrics"]["reference_cache"]["rows_reused"] == first["reference_cache"]["rows_computed"]
    assert read_manifest(stage_dir(lazy, 0, "joint_train"))["metrics"]["eval/pref_loss"] == pytest.approx(
        first["eval/pref_loss"], abs=1e-4)


def test_the_evaluate_stage_serves_training_s_stored_rows_and_matches_a_live_reference(world_run_dir):
    """``stage.ref_cache`` in the evaluate stage reads the store training wrote (same key: reference fingerprint,
    tokenizer, settings), computes nothing for the pairs training evaluated, and gives the live reference's loss."""
    from tests.conftest import compose_run
    from tests.test_joint_train import train

    trained_dir = world_run_dir("trained")
    train(trained_dir, "objective=preference", "stage.train.max_steps=3", "stage.train.eval_every=3",
          "stage.train.ref_cache=true", "loss.nll_weight=0.0")
    trained = stage_dir(trained_dir, 0, "joint_train")

    def held_out_preference(run_dir, *extra):
        run_stage(compose_run("stage=evaluate", "world=ci", "stage.progress=false", f"run_dir={run_dir}",
                              f"stage.models=['{trained}']", "stage.suites=[preference]", "loss.nll_weight=0.0",
                              "data.preference_eval.max_rows=16", *extra))  # the 16 pairs training evaluated
        report = json.loads((stage_dir(run_dir, 0, "evaluate") / "eval.json").read_text())
        (result,) = report["results"]["preference"].values()
        return result

    cached = held_out_preference(trained_dir, "stage.ref_cache=true")
    live = held_out_preference(world_run_dir("live"))
    assert cached["pairs"] == live["pairs"] == 16
    assert cached["reference_cache"]["rows_computed"] == 0 and cached["reference_cache"]["rows_reused"] == 16
    assert "reference_cache" not in live
    assert cached["pref_loss"] == pytest.approx(live["pref_loss"], abs=1e-5)
    assert cached["pref_loss"] == pytest.approx(read_manifest(trained)["metrics"]["eval/pref_loss"], abs=1e-5)


# ---- lazy store: rows computed when first used, appended as shards, reused by later instances ----

def lazy_setup(tmp_path, pairs, writer="rank0", reference=None):
    """A lazy reference over ``pairs`` on the store in ``tmp_path``; the wrapped reference records the ids of
    every batch it computes."""
    live = reference or model_reference(tiny_llama("sdpa"))
    computed: list[list[str]] = []

    def recording(batch):
        computed.append(list(batch["ids"]))
        return live(batch)

    collate = WithIds(partial(collate_preference, pad_id=0))
    store = ShardStore(tmp_path / "ref_logps", store_key("ref", "tok", {"max_length": 64}), writer=writer)
    return LazyCachedReference(recording, store, pairs, collate), computed, collate


def dpo_losses(reference, batches):
    policy = tiny_llama("sdpa", seed=1)
    component = PreferenceComponent(LossType("dpo"), LossParams(beta=0.1), reference)
    with torch.no_grad():
        return [component.loss(policy, batch)[0] for batch in batches]


@pytest.mark.parametrize("layout", [collate_preference, collate_prefix_shared])
def test_lazy_eager_and_live_give_identical_losses_on_the_same_batches(tmp_path, layout):
    live, pairs = model_reference(tiny_llama("sdpa")), random_pairs(9)
    collate = WithIds(partial(layout, pad_id=0))
    batches = [collate(chunk) for chunk in reference_batches(pairs, 4)]  # the eager pass's grouping
    eager = CachedReference(compute_reference_table(live, pairs, batch_size=4, collate=collate))
    lazy, computed, _ = lazy_setup(tmp_path, pairs, reference=live)
    lazy.collate = collate
    reread, _, _ = lazy_setup(tmp_path, pairs, reference=live)
    expected = dpo_losses(live, batches)
    for reference in (eager, lazy, reread):  # reread: a second instance reading the first one's shards
        assert all(torch.equal(a, b) for a, b in zip(dpo_losses(reference, batches), expected, strict=True))
    assert len(computed) == len(batches) and lazy.misses == len(pairs) and reread.misses == 0


def test_a_second_instance_over_the_same_rows_computes_nothing(tmp_path):
    pairs = random_pairs(8)
    first, computed, collate = lazy_setup(tmp_path, pairs)
    for chunk in (pairs[:3], pairs[3:6], pairs[6:]):
        first(collate(chunk))
    assert (first.misses, first.hits, len(computed)) == (8, 0, 3)
    first(collate(pairs[1:5]))  # a later epoch, another grouping
    assert (first.misses, first.hits, len(computed)) == (8, 4, 3)
    second, computed_again, _ = lazy_setup(tmp_path, pairs)
    regrouped = [second(collate([pairs[i] for i in group])) for group in ([7, 0, 2], [5, 1], [3, 4, 6])]
    assert computed_again == [] and second.misses == 0 and second.hits == 8
    assert second.report() == {"rows_cached": 8, "rows_computed": 0, "rows_reused": 8, "hits": 8, "misses": 0,
                               "shards_ignored": 0}
    live = model_reference(tiny_llama("sdpa"))(collate([pairs[i] for i in (7, 0, 2)]))
    for cached, fresh in zip(regrouped[0], live, strict=True):  # computed in other groupings: equal to rounding
        torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=1e-6)


def test_only_the_rows_used_are_computed_and_a_mixed_batch_computes_only_its_missing_rows(tmp_path):
    pairs = random_pairs(10)
    lazy, computed, collate = lazy_setup(tmp_path, pairs)
    lazy(collate(pairs[:3]))
    lazy(collate([pairs[1], pairs[6], pairs[2], pairs[8]]))
    assert computed == [["p0", "p1", "p2"], ["p6", "p8"]]  # the second forward saw the two new rows only
    assert sorted(pair_id for pair_id, _ in lazy.store.rows) == ["p0", "p1", "p2", "p6", "p8"]
    assert lazy.report() == {"rows_cached": 5, "rows_computed": 5, "rows_reused": 0, "hits": 2, "misses": 5,
                             "shards_ignored": 0}
    assert "5 computed" in lazy.describe()
    assert len(list(lazy.store.directory.glob("*.safetensors"))) == 2  # one shard per computing batch


def test_torn_damaged_or_foreign_shards_are_ignored_and_their_rows_recomputed(tmp_path):
    pairs = random_pairs(6)
    first, _, collate = lazy_setup(tmp_path, pairs)
    for chunk in (pairs[:2], pairs[2:4], pairs[4:]):
        first(collate(chunk))
    directory = first.store.directory
    torn, flipped, intact = sorted(directory.glob("*.safetensors"))
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0xFF  # a damaged value: the file still parses, the checksum does not match
    flipped.write_bytes(bytes(data))
    (directory / "garbage.safetensors").write_bytes(b"\x00" * 40)
    (directory / ".rank9-1-ab-000001.safetensors.tmp").write_bytes(b"half a shard")  # a crash mid-write
    save_table(directory / "foreign.safetensors", {"p0": (1.0, 2.0)}, "other-format")
    with pytest.warns(UserWarning, match="unreadable and ignored"):
        second, computed, _ = lazy_setup(tmp_path, pairs)
    assert len(second.store.ignored) == 4 and len(second.store.rows) == 2
    chosen, rejected = second(collate(pairs))
    assert second.misses == 4 and sorted(sum(computed, [])) == ["p0", "p1", "p2", "p3"]
    original = CachedReference({k: v for k, v in first_values(first, pairs).items()})(collate(pairs))
    torch.testing.assert_close(chosen, original[0], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(rejected, original[1], atol=1e-5, rtol=1e-6)
    assert intact.is_file()


def first_values(lazy, pairs):
    return {pair.id: lazy.store.rows[lazy.row_key(pair.id)] for pair in pairs}


def test_a_crash_while_appending_loses_only_the_batch_in_flight(tmp_path, monkeypatch):
    import alignment.train.ref_store as ref_store

    pairs = random_pairs(6)
    lazy, _, collate = lazy_setup(tmp_path, pairs)
    lazy(collate(pairs[:3]))

    def crash(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(ref_store.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        lazy(collate(pairs[3:]))
    monkeypatch.undo()
    again, computed, _ = lazy_setup(tmp_path, pairs)
    again(collate(pairs))
    assert computed == [["p3", "p4", "p5"]] and again.store.ignored == []


def test_changed_token_ids_under_the_same_id_are_recomputed_not_served_stale(tmp_path):
    pairs = random_pairs(3)
    first, _, collate = lazy_setup(tmp_path, pairs)
    first(collate(pairs))
    edited = [TokenizedPair("p0", pairs[0].prompt_ids, pairs[0].chosen_ids + [5], pairs[0].rejected_ids),
              *pairs[1:]]
    second, computed, _ = lazy_setup(tmp_path, edited)
    chosen, _ = second(collate(edited))
    assert computed == [["p0"]] and second.misses == 1
    live_chosen, _ = model_reference(tiny_llama("sdpa"))(collate(edited[:1]))
    assert chosen[0] == live_chosen[0] and chosen[0] != first_values(first, pairs)["p0"][0]


def test_ranks_write_separate_shards_and_reuse_each_others_rows(tmp_path):
    pairs = random_pairs(8)
    rank0, computed0, collate = lazy_setup(tmp_path, pairs, writer="rank0")
    rank1, computed1, _ = lazy_setup(tmp_path, pairs, writer="rank1")
    rank0(collate(pairs[:4]))
    rank1(collate(pairs[4:]))
    rank1(collate(pairs[:4]))  # rank 0 computed these after rank 1 started: read from its shard
    assert computed1 == [["p4", "p5", "p6", "p7"]] and rank1.misses == 4 and rank1.hits == 4
    names = sorted(p.name for p in rank0.store.directory.glob("*.safetensors"))
    assert [name.split("-")[0] for name in names] == ["rank0", "rank1"]
    merged = rank0.store.compact()
    assert merged is not None and [p.name for p in rank0.store.directory.glob("*.safetensors")] == [merged.name]
    third, computed3, _ = lazy_setup(tmp_path, pairs)
    third(collate(pairs))
    assert computed3 == [] and first_values(third, pairs) == {**first_values(rank0, pairs[:4]),
                                                              **first_values(rank1, pairs[4:])}


def test_prefetch_is_the_eager_pass_on_the_lazy_store(tmp_path):
    pairs = random_pairs(7)
    lazy, computed, collate = lazy_setup(tmp_path, pairs)
    lazy(collate(pairs[:2]))
    assert lazy.prefetch(pairs, batch_size=2, progress=False) == 5
    assert sorted(sum(computed[1:], [])) == ["p2", "p3", "p4", "p5", "p6"]
    later, computed_later, _ = lazy_setup(tmp_path, pairs)
    assert later.prefetch(pairs, batch_size=2, progress=False) == 0 and computed_later == []


def test_the_store_key_names_reference_tokenizer_and_settings_but_no_data():
    base = store_key("ref", "tok", {"max_length": 64})
    others = {store_key("ref2", "tok", {"max_length": 64}), store_key("ref", "tok2", {"max_length": 64}),
              store_key("ref", "tok", {"max_length": 32})}
    assert base not in others and len(others) == 3
    assert pair_content_hash(random_pairs(1)[0]) != pair_content_hash(random_pairs(1, seed=1)[0])


def test_after_an_eager_pass_the_reference_can_be_dropped(tmp_path):
    pairs = random_pairs(6)
    cache, _, collate = lazy_setup(tmp_path, pairs)
    with pytest.raises(RuntimeError, match="not stored yet"):
        cache.drop_reference()
    cache.prefetch(pairs, batch_size=4, progress=False)
    cache.drop_reference()
    chosen, _ = cache(collate(pairs[:3]))  # served from the store without the reference
    assert chosen.shape == (3,) and cache.report()["misses"] == 0
