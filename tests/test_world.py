"""The embedded task world: answers, verifier, wrong answers, splits, determinism and ids."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from alignment.hashing import row_id
from alignment.world.splits import (
    SPLITS,
    WorldSizes,
    build_world,
    pretraining_texts,
    reserved_for_pretraining,
    row_prompt,
    world_corpus,
    write_world,
)
from alignment.world.tasks import (
    FAMILIES,
    PREFERENCE_FAMILIES,
    SFT_FAMILIES,
    family_of,
    sample_prompt,
    solve,
    verify,
    wrong_answer,
)
from alignment.world.tokenizer import render_chat

SMALL = WorldSizes(sft_train=90, sft_eval=15, pref_train=80, pref_eval=10, golden=20, candidates=50, prompts=25,
                   eval_per_family=8, corrupt_fraction=0.3)

# (prompt, correct answer, a wrong answer) per family, computed by hand.
HAND_CASES = [
    ("What is 23 + 5?", "28", "29"),
    ("What is 40 - 7?", "33", "47"),
    ("What is 99 + 9?", "108", "107"),
    ("Uppercase the words: cat dog", "CAT DOG", "CAT dog"),
    ("Uppercase the words: star star moon", "STAR STAR MOON", "Star Star Moon"),
    ("Count the word cat in: cat dog cat", "2", "3"),
    ("Count the word sun in: tree hat", "0", "2"),
    ("Reverse the words: cat dog sun", "sun dog cat", "cat dog sun"),
    ("Reverse the words: moon moon tree", "tree moon moon", "moon tree moon"),
    ("Sort ascending: 5 2 9", "2 5 9", "9 5 2"),
    ("Sort ascending: 3 3 1 0 7", "0 1 3 3 7", "0 1 3 7 3"),
]


@pytest.fixture(scope="module")
def world() -> dict[str, list[dict]]:
    return build_world(7, SMALL)


def _prompts(rows: list[dict]) -> list[str]:
    return [row_prompt(r) for r in rows]


@pytest.mark.parametrize(("prompt", "answer", "wrong"), HAND_CASES)
def test_solve_and_verify_hand_cases(prompt: str, answer: str, wrong: str) -> None:
    assert solve(prompt) == answer
    assert verify(prompt, answer) == 1.0
    assert verify(prompt, wrong) == 0.0
    # Whitespace around the answer and anything from the EOS text onwards are tolerated.
    assert verify(prompt, f"  {answer} \n") == 1.0
    assert verify(prompt, f"{answer}</s>\n<|user|>\nmore") == 1.0
    assert verify(prompt, "") == 0.0
    assert verify(prompt, answer + " extra") == 0.0


def test_family_of_names_every_family() -> None:
    found = {family_of(p) for p, _, _ in HAND_CASES}
    assert found == set(FAMILIES)


@pytest.mark.parametrize("prompt", ["Tell me a joke", "What is 2 * 3?", "Reverse the words:", "Sort ascending: a b"])
def test_verify_rejects_foreign_prompt(prompt: str) -> None:
    with pytest.raises(ValueError, match="not from the embedded task world"):
        verify(prompt, "anything")


def test_family_constants_are_disjoint_and_cover_families() -> None:
    assert not set(SFT_FAMILIES) & set(PREFERENCE_FAMILIES)
    assert set(SFT_FAMILIES) | set(PREFERENCE_FAMILIES) == set(FAMILIES)
    assert len(FAMILIES) >= 5


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_answers_are_wrong_and_plausible(family: str) -> None:
    rng = random.Random(0)
    for _ in range(200):
        prompt = sample_prompt(family, rng)
        correct, wrong = solve(prompt), wrong_answer(prompt, rng)
        assert wrong != correct
        assert verify(prompt, wrong) == 0.0
        if family in ("arithmetic", "count"):
            # Plausible numbers: non-negative and close to the truth (off by one/ten, or the other operation).
            assert wrong.isdigit()
            assert abs(int(wrong) - int(correct)) <= 18
        else:
            # Plausible lists: same number of items, drawn from the same kind of tokens.
            assert len(wrong.split()) == len(correct.split())
            if family == "sort":
                assert all(t.isdigit() for t in wrong.split())


def test_world_is_deterministic_by_seed(world: dict[str, list[dict]]) -> None:
    assert build_world(7, SMALL) == world
    other = build_world(8, SMALL)
    for split in SPLITS:
        assert [r["id"] for r in other[split]] != [r["id"] for r in world[split]]


def test_split_sizes_and_families(world: dict[str, list[dict]]) -> None:
    assert {s: len(rows) for s, rows in world.items()} == {
        "eval_tasks": 8 * len(FAMILIES), "golden": 20, "sft_eval": 15, "pref_eval": 10, "sft_train": 90,
        "pref_train": 80, "candidates": 50, "prompts": 25,
    }
    for split in ("sft_train", "sft_eval"):
        assert {r["family"] for r in world[split]} == set(SFT_FAMILIES)
    for split in ("pref_train", "pref_eval"):
        assert {r["family"] for r in world[split]} == set(PREFERENCE_FAMILIES)
    for split in ("golden", "candidates", "prompts", "eval_tasks"):
        assert {r["family"] for r in world[split]} == set(FAMILIES)
    eval_counts = {f: sum(r["family"] == f for r in world["eval_tasks"]) for f in FAMILIES}
    assert set(eval_counts.values()) == {8}
    for split, rows in world.items():
        assert all(family_of(p) == r["family"] for p, r in zip(_prompts(rows), rows, strict=True)), split


def test_rows_have_correct_answers_and_schema(world: dict[str, list[dict]]) -> None:
    for split in ("sft_train", "sft_eval", "golden"):
        for row in world[split]:
            user, assistant = row["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            assert verify(user["content"], assistant["content"]) == 1.0
    for split in ("pref_train", "pref_eval"):
        for row in world[split]:
            assert verify(row["prompt"], row["chosen"]) == 1.0
            assert verify(row["prompt"], row["rejected"]) == 0.0
    for row in world["eval_tasks"]:
        assert row["answer"] == solve(row["prompt"])


def test_splits_are_disjoint_in_prompts(world: dict[str, list[dict]]) -> None:
    seen: dict[str, str] = {}
    for split, rows in world.items():
        for prompt in _prompts(rows):
            assert prompt not in seen, f"{prompt!r} is in both {seen.get(prompt)} and {split}"
            seen[prompt] = split
    assert not any(reserved_for_pretraining(p) for p in seen)
    pretrain_prompts = {t.split("<|user|>\n", 1)[1].split("</s>", 1)[0] for t in pretraining_texts(7, 300)}
    assert not pretrain_prompts & set(seen)


def test_held_out_sets_do_not_depend_on_training_sizes(world: dict[str, list[dict]]) -> None:
    bigger = build_world(7, WorldSizes(sft_train=300, pref_train=200, candidates=100, prompts=40,
                                       golden=20, sft_eval=15, pref_eval=10, eval_per_family=8))
    assert bigger["eval_tasks"] == world["eval_tasks"]
    assert bigger["golden"] == world["golden"]


def test_candidates_corruption_fraction_and_labels(world: dict[str, list[dict]]) -> None:
    rows = world["candidates"]
    corrupted = [r for r in rows if r["corrupted"]]
    assert len(corrupted) == round(0.3 * len(rows)) == 15
    for row in rows:
        user, assistant = row["messages"]
        assert verify(user["content"], assistant["content"]) == (0.0 if row["corrupted"] else 1.0)


def test_mismatch_corruption_is_another_family_prompts_answer(world: dict[str, list[dict]]) -> None:
    rows = world["candidates"]
    answers_by_family: dict[str, set[str]] = {}
    for row in rows:
        answers_by_family.setdefault(row["family"], set()).add(solve(row["messages"][0]["content"]))
    corrupted = [r for r in rows if r["corrupted"]]
    assert {r["corruption"] for r in corrupted} == {"mismatch"}
    assert all("corruption" not in r for r in rows if not r["corrupted"])
    for row in corrupted:
        prompt, response = row["messages"][0]["content"], row["messages"][1]["content"]
        donors = {f for f, answers in answers_by_family.items() if response in answers}
        assert donors - {row["family"]}, f"{response!r} is no other family's candidate answer"
        assert verify(prompt, response) == 0.0


def _candidates(corruption: str, n: int = 60) -> list[dict]:
    sizes = WorldSizes(sft_train=3, sft_eval=3, pref_train=2, pref_eval=2, golden=5, candidates=n, prompts=5,
                       eval_per_family=1, corrupt_fraction=0.5, corruption=corruption)
    return build_world(3, sizes)["candidates"]


def test_near_miss_and_mixed_corruption() -> None:
    near = _candidates("near_miss")
    assert {r["corruption"] for r in near if r["corrupted"]} == {"near_miss"}
    for row in near:
        if row["corrupted"]:  # a near miss has the shape of the right answer (same item count)
            answer = solve(row["messages"][0]["content"])
            assert len(row["messages"][1]["content"].split()) == len(answer.split())
    mixed = _candidates("mixed")
    kinds = [r["corruption"] for r in mixed if r["corrupted"]]
    assert len(kinds) == 30 and kinds.count("near_miss") == 15 and kinds.count("mismatch") == 15
    # the same prompts and corrupted rows whatever the kind: only the corrupted answers differ
    assert [r["messages"][0] for r in mixed] == [r["messages"][0] for r in near]
    assert [r["corrupted"] for r in mixed] == [r["corrupted"] for r in near]
    assert [r for r in mixed if not r["corrupted"]] == [r for r in near if not r["corrupted"]]


def test_corrupt_fraction_extremes() -> None:
    sizes = WorldSizes(sft_train=3, sft_eval=3, pref_train=2, pref_eval=2, golden=5, candidates=20, prompts=5,
                       eval_per_family=1, corrupt_fraction=1.0)
    assert all(r["corrupted"] for r in build_world(0, sizes)["candidates"])


def test_ids_are_content_hashes_and_unique(world: dict[str, list[dict]]) -> None:
    for split, rows in world.items():
        ids = [r["id"] for r in rows]
        assert len(set(ids)) == len(ids), split
    sft = world["sft_train"][0]
    assert sft["id"] == row_id(sft)
    prompt_row = world["prompts"][0]
    # Prompt-pool and eval ids hash the prompt alone, so every response to a prompt can share its id.
    assert prompt_row["id"] == row_id({"prompt": prompt_row["prompt"]}, ("prompt",))
    assert world["eval_tasks"][0]["id"] == row_id({"prompt": world["eval_tasks"][0]["prompt"]}, ("prompt",))


def test_world_sizes_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="sft_train=-1"):
        WorldSizes(sft_train=-1)
    with pytest.raises(ValueError, match="corrupt_fraction=1.5"):
        WorldSizes(corrupt_fraction=1.5)
    with pytest.raises(ValueError, match="corruption='typo' is not one of"):
        WorldSizes(corruption="typo")
    one_family = WorldSizes(sft_train=0, sft_eval=0, pref_train=0, pref_eval=0, golden=0, candidates=1,
                            prompts=0, eval_per_family=0, corrupt_fraction=1.0)
    with pytest.raises(ValueError, match="at least two families"):
        build_world(0, one_family)


def test_exhausted_prompt_space_is_a_clear_error() -> None:
    # Arithmetic (two-digit +- one-digit) has only 90 * 9 * 2 = 1620 prompts, a quarter reserved for pretraining.
    with pytest.raises(ValueError, match="arithmetic.*exhausted"):
        build_world(0, WorldSizes(sft_train=6000, sft_eval=0, pref_train=0, pref_eval=0, golden=0,
                                  candidates=0, prompts=0, eval_per_family=0))


def test_write_world_round_trips(world: dict[str, list[dict]], tmp_path: Path) -> None:
    counts = write_world(world, tmp_path / "w")
    assert counts == {s: len(rows) for s, rows in world.items()}
    for split, rows in world.items():
        lines = (tmp_path / "w" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows


def test_world_corpus_contains_prompts_and_answers(world: dict[str, list[dict]]) -> None:
    corpus = set(world_corpus(world))
    row = world["pref_train"][0]
    assert {row["prompt"], row["chosen"], row["rejected"]} <= corpus
    assert world["sft_train"][0]["messages"][1]["content"] in corpus


def test_pretraining_texts_format_fraction_and_determinism() -> None:
    texts = pretraining_texts(3, 1000, correct_fraction=0.5)
    assert texts == pretraining_texts(3, 1000, correct_fraction=0.5)
    assert texts != pretraining_texts(4, 1000, correct_fraction=0.5)
    correct = 0
    for text in texts:
        prompt = text.split("<|user|>\n", 1)[1].split("</s>", 1)[0]
        answer = text.split("<|assistant|>\n", 1)[1].split("</s>", 1)[0]
        assert text == render_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
        assert reserved_for_pretraining(prompt)
        correct += int(verify(prompt, answer))
    # Binomial(1000, 0.5): 5 standard deviations is about +-79.
    assert 420 <= correct <= 580
    assert all(verify(t.split("<|user|>\n")[1].split("</s>")[0], t.split("<|assistant|>\n")[1]) == 1.0
               for t in pretraining_texts(3, 50, correct_fraction=1.0))
