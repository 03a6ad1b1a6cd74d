"""Self-instruct pieces: ROUGE-L (exact and indexed), prompts, parsing, post-filters, the loop, clustering,
and the embedded world's fresh-prompt generator."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from alignment.generation.base import Completion, GenerationBackend, ProgressFn, SamplingSettings
from alignment.generation.clustering import diverse_order, kmeans, select_diverse, tfidf_matrix
from alignment.generation.rouge import RougeLIndex, lcs_length, rouge_l_f1, rouge_tokens
from alignment.generation.self_instruct import (
    InstructionFilter,
    SelfInstructSettings,
    encode_request,
    instruction_row,
    parse_instructions,
    self_instruct,
    task_list_prompt,
)
from alignment.world.prompts import fresh_world_prompts

SEED_TASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct_seed" / "seed_tasks.jsonl"
WORDS = ("write", "a", "poem", "about", "the", "sea", "list", "three", "facts", "on", "cats", "explain", "why",
         "sky", "is", "blue", "give", "me", "an", "example", "of", "good", "bad", "code", "story", "short")


def lcs_table(a: Sequence[int], b: Sequence[int]) -> int:
    """Textbook O(|a|·|b|) dynamic program, the reference for the bit-parallel LCS."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def random_sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))


def test_bit_parallel_lcs_equals_the_dynamic_program() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(6) for _ in range(rng.randint(0, 80))]  # > 64 tokens crosses a machine word
        b = [rng.randrange(6) for _ in range(rng.randint(0, 80))]
        assert lcs_length(a, b) == lcs_table(a, b)


def test_rouge_l_by_hand() -> None:
    # "the cat sat on the mat" vs "the cat lay on a mat": LCS "the cat on mat" = 4, F1 = 2·4 / (6 + 6)
    index = RougeLIndex()
    a, b = index.encode("The cat sat on the mat.", grow=True), index.encode("the cat lay on a mat", grow=True)
    assert rouge_l_f1(a, b) == pytest.approx(8 / 12)
    assert rouge_tokens("Hello, World-2!") == ["hello", "world", "2"]
    assert rouge_l_f1([], b) == 0.0


def test_index_flags_exactly_the_pairs_at_or_above_threshold() -> None:
    rng = random.Random(1)
    pool = [random_sentence(rng) for _ in range(400)]
    queries = [random_sentence(rng) for _ in range(150)] + [pool[5], pool[7] + " sea"]
    index = RougeLIndex(0.7)
    index.add_all(pool)
    sequences = [index.encode(t) for t in pool]
    for query in queries:
        q = index.encode(query)
        brute = max(rouge_l_f1(q, s) for s in sequences)
        best, _ = index.max_score(query)
        assert index.is_duplicate(query) == (brute >= 0.7)
        if brute >= 0.7:
            assert best == pytest.approx(brute)
    assert index.lcs_computed < 0.2 * len(queries) * len(pool)  # the overlap bound skipped most pairs


def test_add_if_novel_keeps_the_first_of_near_duplicates() -> None:
    index = RougeLIndex(0.7)
    assert index.add_if_novel("Write a poem about the sea")
    assert not index.add_if_novel("Write a short poem about the sea")  # 2·6/(6+7) = 0.92
    assert index.add_if_novel("List three facts on cats")
    assert len(index) == 2


@pytest.mark.slow
def test_deduplicating_ten_thousand_instructions_is_fast() -> None:
    rng = random.Random(2)
    vocabulary = [f"w{i}" for i in range(3000)] + list(WORDS) * 20
    texts = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(5, 25))) for _ in range(10_000)]
    index = RougeLIndex(0.7)
    started = time.perf_counter()
    kept = sum(index.add_if_novel(t) for t in texts)
    seconds = time.perf_counter() - started
    print(f"ROUGE-L dedup of 10k instructions: {seconds:.2f}s, {index.lcs_computed} LCS computed, {kept} kept")
    assert seconds < 60 and kept > 9000


def test_task_list_prompt_and_parsing() -> None:
    prompt = task_list_prompt(["Name a  colour.", "Add two numbers."])
    assert prompt == "Come up with a series of tasks:\n\n1. Name a colour.\n2. Add two numbers.\n3."
    assert parse_instructions(" write a haiku.\n4. Spell  cat backwards.\n5. Sum 1 and 2", 3) == [
        "Write a haiku.", "Spell cat backwards.", "Sum 1 and 2"]
    assert parse_instructions("3. Do this.\n4. Do that", 3, truncated=True) == ["Do this."]
    assert parse_instructions("", 3) == []


def test_post_filters_name_the_failing_rule() -> None:
    rules = InstructionFilter(min_words=3, max_words=8)
    assert rules.rejection("Explain why the sky is blue") is None
    assert rules.rejection("Say hi") == "too_short"
    assert rules.rejection("one two three four five six seven eight nine") == "too_long"
    assert rules.rejection("Describe this image in detail") == "keyword"
    assert rules.rejection("Please go to the shop") == "keyword"
    assert rules.rejection("Mapping words to numbers here") is None  # "map" only as a whole word
    assert rules.rejection("Write a program that sorts numbers") == "program"
    assert rules.rejection('"Quote" this sentence back now') == "punctuation_start"
    assert rules.rejection("Écris une phrase en français") == "non_ascii_start"


class ScriptedBackend(GenerationBackend):
    """Returns scripted responses in order and records the requests."""

    name = "scripted"

    def __init__(self, responses: list[str], tokenizer: object):
        self.responses = list(responses)
        self.tokenizer = tokenizer
        self.requests: list[list[int]] = []

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int] | None = None, on_done: ProgressFn | None = None) -> list[Completion]:
        self.requests += [list(p) for p in prompts]
        texts = [self.responses.pop(0) if self.responses else "" for _ in prompts]
        return [Completion([t], ["stop"], [len(t.split())]) for t in texts]


class WordTokenizer:
    """Enough of a tokenizer for raw prompts: one id per character, BOS 1."""

    bos_token_id = 1
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_self_instruct_filters_deduplicates_and_stops_at_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    seeds = ["Name three colours of the rainbow.", "Add the numbers seven and five.",
             "Translate hello into French please."]
    responses = [
        " Write a limerick about a lazy cat.\n5. Draw a picture of a house.\n6. Hi",  # keep, keyword, too short
        " Name three colours of the rainbow please.",  # ROUGE duplicate of a seed
        " Write a limerick about a lazy old cat.\n5. Explain how tides work on earth.",  # dup, keep
        " Summarise the story of Hamlet briefly.",  # keep (3rd): target reached
        " Never requested.",
    ]
    backend = ScriptedBackend(responses, WordTokenizer())
    settings = SelfInstructSettings(n_instructions=3, seed_shots=2, machine_shots=1, requests_per_round=2,
                                    prompt_format="raw", seed=1)
    kept, report = self_instruct(backend, seeds, settings, SamplingSettings(), progress=True)
    assert kept == ["Write a limerick about a lazy cat.", "Explain how tides work on earth.",
                    "Summarise the story of Hamlet briefly."]
    assert re.search(r"self-instruct: 100%.*3/3.*rounds=2", capsys.readouterr().err)  # the bar counts kept ones
    assert report.rejected == {"keyword": 1, "too_short": 1} and report.duplicates == 2
    assert report.rounds == 2 and report.requests == 4
    first = "".join(chr(i) for i in backend.requests[0][1:])
    assert backend.requests[0][0] == 1 and first.startswith("Come up with a series of tasks:\n\n1. ")
    assert first.endswith("\n4.") and sum(seed in first for seed in seeds) == 3  # 2 seed + 1 machine slot
    later = "".join(chr(i) for i in backend.requests[2][1:])
    assert "Write a limerick about a lazy cat." in later  # generated instructions join the few-shot mix


def test_chat_requests_use_the_chat_template(prepared_world: Path) -> None:
    from alignment.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(prepared_world / "round_00" / "prepare" / "model"))
    ids = encode_request(tokenizer, "Come up with a series of tasks:\n\n1. A\n2.", "chat")
    assert str(tokenizer.decode(ids)).startswith("<s><|user|>\nCome up") and ids.count(tokenizer.bos_token_id) == 1
    with pytest.raises(ValueError, match="prompt_format"):
        encode_request(tokenizer, "x", "xml")


def test_seed_tasks_file_reads_as_prompt_rows() -> None:
    if not SEED_TASKS.is_file():
        pytest.skip("shared self-instruct seed data is absent")
    from alignment.data.readers import read_rows

    rows = read_rows(SEED_TASKS, kind="prompt").rows
    assert len(rows) == 175
    assert rows[0].messages[-1]["content"].startswith("Is there anything I can eat for a breakfast")


def test_instruction_rows_carry_stable_message_ids() -> None:
    from alignment.data.rows import messages_id

    row = instruction_row("What is 2 + 2?", "world", 3, family="arithmetic")
    assert row == {"id": messages_id([{"role": "user", "content": "What is 2 + 2?"}]), "prompt": "What is 2 + 2?",
                   "messages": [{"role": "user", "content": "What is 2 + 2?"}], "family": "arithmetic",
                   "provenance": "world", "round": 3}


def test_kmeans_separates_two_topics_and_selection_covers_both() -> None:
    texts = [f"cook pasta with tomato sauce variant {i}" for i in range(6)] + \
            [f"fix the python bug in module {i}" for i in range(6)]
    matrix = tfidf_matrix(texts)
    assert matrix.shape[0] == 12 and np.allclose(np.linalg.norm(matrix, axis=1), 1.0)
    labels = kmeans(matrix, 2, seed=0)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6]
    keep, _ = select_diverse(texts, 2, 2, seed=0)
    assert len(keep) == 2 and keep[0] < 6 <= keep[1]
    assert diverse_order([0, 0, 1, 2, 1]) == [0, 2, 3, 1, 4]


def test_world_prompts_are_fresh_deterministic_and_round_dependent() -> None:
    from alignment.world.tasks import family_of

    first = fresh_world_prompts(30, seed=0, round_index=1, exclude=[])
    assert first == fresh_world_prompts(30, seed=0, round_index=1, exclude=[])
    assert first != fresh_world_prompts(30, seed=0, round_index=2, exclude=[])
    assert len({p for _, p in first}) == 30 and all(family_of(p) == f for f, p in first)
    excluded = {p for _, p in first[:10]}
    again = fresh_world_prompts(30, seed=0, round_index=1, exclude=excluded)
    assert not excluded & {p for _, p in again}
