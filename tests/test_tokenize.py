"""Tokenization: exact response masks, one BOS / one EOS, truncation, BPE prefix fallback, stats, preview."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from alignment.data.formats import parse_row
from alignment.data.readers import read_rows
from alignment.data.rows import PreferenceRow, PromptRow, SFTRow, UnpairedRow
from alignment.data.stats import length_summary
from alignment.data.tokenize import (
    IGNORE_INDEX,
    TokenizedPair,
    TokenizedSFT,
    encode_text,
    preview,
    render_prompt,
    tokenize_dataset,
    tokenize_preference,
    tokenize_sft,
)
from alignment.world.tokenizer import train_tokenizer

SHARED_DATA = Path(os.environ.get("ALIGNMENT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HH_TEST = SHARED_DATA / "hh_rlhf" / "test.jsonl"
needs_shared_data = pytest.mark.skipif(not HH_TEST.is_file(), reason=f"shared data not found at {SHARED_DATA}")

BASE_TEXTS = [
    "What is the capital of France?\n\nParis is the capital of France.",
    "Please sort these numbers: 3 1 2.\n\nThe sorted numbers are 1 2 3.",
    "Hello there, how are you today?\n\nI am fine, thank you for asking.",
    "Tell me a joke about cats.\n\nWhy did the cat sit on the computer? To keep an eye on the mouse.",
    "A blank line, then another:\n\n\nso runs of newlines become tokens of their own.",
] * 20


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """A byte-level BPE tokenizer with the project's chat template, trained on HH-RLHF text when available."""
    texts = list(BASE_TEXTS)
    if HH_TEST.is_file():
        with HH_TEST.open(encoding="utf-8") as handle:
            for _, line in zip(range(300), handle, strict=False):
                raw = json.loads(line)
                texts += [raw["prompt"], raw["chosen"], raw["rejected"]]
    return train_tokenizer(texts, vocab_size=1024)


def sft_row(question: str, answer: str) -> SFTRow:
    row = parse_row({"prompt": question, "response": answer}, "sft")
    assert isinstance(row, SFTRow)
    return row


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def masked_text(tokenizer: Any, example: TokenizedSFT, value: int) -> str:
    return decode(tokenizer, [t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if m == value])


# --- rendering and masks -----------------------------------------------------------------------------------


def test_render_prompt_uses_the_chat_template(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = "<s><|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    assert render_prompt(tokenizer, messages) == expected


def test_loss_mask_covers_exactly_the_response_and_eos(tokenizer: Any) -> None:
    example = tokenize_sft(tokenizer, sft_row("What is the capital of France?", "Paris is the capital."), 128)
    assert example is not None
    assert masked_text(tokenizer, example, 1) == "Paris is the capital.</s>"
    assert masked_text(tokenizer, example, 0) == "<s><|user|>\nWhat is the capital of France?</s>\n<|assistant|>\n"
    assert example.labels == [IGNORE_INDEX if m == 0 else t for t, m in zip(example.input_ids, example.loss_mask,
                                                                                 strict=True)]
    assert example.loss_mask == [0] * example.prompt_length + [1] * example.response_length
    assert example.input_ids[0] == tokenizer.bos_token_id and example.input_ids.count(tokenizer.bos_token_id) == 1
    assert example.input_ids[-1] == tokenizer.eos_token_id
    # the template closes the user turn with one EOS; the response adds exactly one more
    assert example.input_ids.count(tokenizer.eos_token_id) == 2
    assert not example.truncated and not example.prefix_fallback


def test_response_already_ending_with_eos_text_gets_no_second_eos(tokenizer: Any) -> None:
    example = tokenize_sft(tokenizer, sft_row("Hi", "Hello.</s>"), 64)
    assert example is not None
    assert masked_text(tokenizer, example, 1) == "Hello.</s>"


def test_without_chat_template_the_plain_fallback_is_used_and_bos_prepended_once(tokenizer: Any) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert render_prompt(plain, [{"role": "user", "content": "hi"}]) == "User: hi\nAssistant: "
    example = tokenize_sft(plain, sft_row("hi", "hello"), 64)
    assert example is not None
    assert masked_text(plain, example, 0) == "<s>User: hi\nAssistant: "
    assert masked_text(plain, example, 1) == "hello</s>"


def test_a_template_that_emits_bos_twice_still_gives_one_bos(tokenizer: Any) -> None:
    doubled = copy.deepcopy(tokenizer)
    doubled.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    example = tokenize_sft(doubled, sft_row("Hi", "Hello."), 64)
    assert example is not None
    assert example.input_ids.count(tokenizer.bos_token_id) == 1 and example.input_ids[0] == tokenizer.bos_token_id


def test_prefix_fallback_when_bpe_merges_across_the_boundary(tokenizer: Any) -> None:
    # The prompt ends with "<|assistant|>\n"; a response starting with "\n\n" makes the tokenizer merge the
    # prompt's final newline into a "\n\n" token, so the prompt ids are no longer a prefix of the full ids.
    row = sft_row("Hi", "\n\nhello")
    prompt_text = render_prompt(tokenizer, row.messages)
    prompt_ids = encode_text(tokenizer, prompt_text)
    assert encode_text(tokenizer, prompt_text + row.response)[: len(prompt_ids)] != prompt_ids  # precondition
    example = tokenize_sft(tokenizer, row, 64)
    assert example is not None and example.prefix_fallback
    assert example.input_ids[: example.prompt_length] == prompt_ids
    assert masked_text(tokenizer, example, 1) == "\n\nhello</s>"
    assert decode(tokenizer, example.input_ids) == prompt_text + "\n\nhello</s>"
    _, stats = tokenize_dataset(tokenizer, [row, sft_row("Hi", "hello")], 64)
    assert stats.prefix_fallbacks == 1


def test_unpaired_rows_carry_their_label(tokenizer: Any) -> None:
    row = parse_row({"prompt": "Hi", "completion": "Go away.", "label": False}, "unpaired")
    assert isinstance(row, UnpairedRow)
    example = tokenize_sft(tokenizer, row, 64)
    assert example is not None and example.label is False
    assert masked_text(tokenizer, example, 1) == "Go away.</s>"


# --- truncation --------------------------------------------------------------------------------------------


def long_prompt_row(tokenizer: Any) -> tuple[SFTRow, list[int], list[int]]:
    """A row with a long prompt and a short answer, plus its untruncated prompt and response ids."""
    row = sft_row("Please sort these numbers: " + " ".join(str(i % 10) for i in range(40)), "Done.")
    full = tokenize_sft(tokenizer, row, 10_000)
    assert full is not None
    return row, full.input_ids[: full.prompt_length], full.input_ids[full.prompt_length:]


def test_keep_end_drops_the_oldest_prompt_tokens_but_keeps_bos(tokenizer: Any) -> None:
    row, prompt, response = long_prompt_row(tokenizer)
    max_length = 40
    assert len(prompt) > max_length and len(response) < max_length // 2
    example = tokenize_sft(tokenizer, row, max_length)
    assert example is not None and example.truncated
    keep = max_length - len(response)  # above the default floor max_length // 2, so the response is untouched
    assert example.input_ids == [tokenizer.bos_token_id] + prompt[len(prompt) - keep + 1:] + response
    assert len(example.input_ids) == max_length
    assert decode(tokenizer, example.input_ids).endswith("<|assistant|>\nDone.</s>")


def test_keep_start_drops_the_end_of_the_prompt(tokenizer: Any) -> None:
    row, prompt, response = long_prompt_row(tokenizer)
    example = tokenize_sft(tokenizer, row, 40, truncation="keep_start")
    assert example is not None
    assert example.input_ids == prompt[: 40 - len(response)] + response


def test_response_is_cut_after_the_prompt_reaches_its_floor(tokenizer: Any) -> None:
    row = sft_row("Please sort these numbers: " + "3 1 2 " * 20, "The sorted numbers are " + "1 2 3 " * 20)
    full = tokenize_sft(tokenizer, row, 10_000)
    assert full is not None
    prompt, response = full.input_ids[: full.prompt_length], full.input_ids[full.prompt_length:]
    assert len(prompt) > 20 and len(response) > 20
    example = tokenize_sft(tokenizer, row, 40, min_prompt_length=15)
    assert example is not None and example.truncated
    assert example.prompt_length == 15
    assert example.input_ids == [tokenizer.bos_token_id] + prompt[-14:] + response[:25]
    assert example.input_ids[-1] != tokenizer.eos_token_id  # a cut response does not pretend to end


def test_rows_with_no_response_left_are_dropped_and_counted(tokenizer: Any) -> None:
    row, prompt, _ = long_prompt_row(tokenizer)
    assert tokenize_sft(tokenizer, row, 40, min_prompt_length=40) is None
    short = sft_row("Hi", "Hello.")
    examples, stats = tokenize_dataset(tokenizer, [row, short, row], 40, min_prompt_length=40)
    assert [example.id for example in examples] == [short.id]
    assert (stats.rows, stats.kept, stats.dropped_empty_after_truncation, stats.truncated) == (3, 1, 2, 0)


def test_preference_pair_fits_each_sequence_in_max_length(tokenizer: Any) -> None:
    row = parse_row({"prompt": "Sort: " + "3 1 2 " * 10, "chosen": "1 2 3 " * 10, "rejected": "No."}, "preference")
    assert isinstance(row, PreferenceRow)
    full = tokenize_preference(tokenizer, row, 10_000)
    assert full is not None and not full.truncated
    assert decode(tokenizer, full.prompt_ids) == render_prompt(tokenizer, row.messages)
    assert decode(tokenizer, full.chosen_ids) == row.chosen + "</s>"
    assert decode(tokenizer, full.rejected_ids) == "No.</s>"
    cut = tokenize_preference(tokenizer, row, 30)
    assert cut is not None and cut.truncated
    assert len(cut.prompt_ids) == 15  # floor max_length // 2 because the chosen answer is long
    assert cut.chosen_ids == full.chosen_ids[:15] and cut.rejected_ids == full.rejected_ids
    assert cut.length == 30
    assert tokenize_preference(tokenizer, row, 30, min_prompt_length=30) is None


def test_pairs_identical_after_truncation_are_dropped_and_counted(tokenizer: Any) -> None:
    common = "The sorted numbers are " + " ".join(str(i % 10) for i in range(30))
    row = parse_row({"prompt": "Sort them.", "chosen": common + " and done.", "rejected": common + " or not."},
                    "preference")
    assert isinstance(row, PreferenceRow)
    cut = tokenize_preference(tokenizer, row, 24)
    assert cut is not None and cut.truncated
    assert cut.chosen_ids == cut.rejected_ids  # both responses cut inside their common beginning
    assert tokenize_preference(tokenizer, row, 10_000).chosen_ids != cut.chosen_ids  # type: ignore[union-attr]
    other = parse_row({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}, "preference")
    examples, stats = tokenize_dataset(tokenizer, [row, other], 24)
    assert [example.id for example in examples] == [other.id]
    assert (stats.rows, stats.kept, stats.dropped_identical_pairs, stats.dropped_empty_after_truncation) == (2, 1, 1, 0)
    assert tokenize_dataset(tokenizer, [row], 10_000)[1].dropped_identical_pairs == 0


# --- real HH dialogues, stats, preview ---------------------------------------------------------------------


@needs_shared_data
def test_hh_dialogues_tokenize_with_exact_response_spans(tokenizer: Any) -> None:
    rows = read_rows(HH_TEST, "preference", max_rows=100).rows
    examples, stats = tokenize_dataset(tokenizer, rows, 512)
    assert stats.rows == 100
    assert stats.kept + stats.dropped_empty_after_truncation + stats.dropped_identical_pairs == 100
    assert stats.lengths["max"] <= 512
    by_id = {row.id: row for row in rows}
    checked = 0
    for example in examples:
        assert isinstance(example, TokenizedPair)
        row = by_id[example.id]
        assert isinstance(row, PreferenceRow)
        assert example.prompt_ids[0] == tokenizer.bos_token_id
        assert example.prompt_ids.count(tokenizer.bos_token_id) == 1
        if not example.truncated:
            assert decode(tokenizer, example.prompt_ids) == render_prompt(tokenizer, row.messages)
            assert decode(tokenizer, example.chosen_ids) == row.chosen + "</s>"
            assert decode(tokenizer, example.rejected_ids) == row.rejected + "</s>"
            checked += 1
    assert checked > 50


def whole_text_response_ids(tokenizer: Any, prompt_text: str, response: str) -> list[int]:
    """The definition: ``prompt + response`` encoded whole and cut at the prompt (the response alone if BPE merged
    across the boundary), one EOS."""
    prompt_ids = encode_text(tokenizer, prompt_text)
    full = encode_text(tokenizer, prompt_text + response)
    ids = full[len(prompt_ids):] if full[: len(prompt_ids)] == prompt_ids else encode_text(tokenizer, response)
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


class RecordingTokenizer:
    """A tokenizer that records the texts it encodes and may report other strings as its special tokens."""

    def __init__(self, tokenizer: Any, specials: list[str] | None = None):
        self._tokenizer = tokenizer
        self.all_special_tokens = tokenizer.all_special_tokens if specials is None else specials
        self.encoded: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, text: str | list[str], **kwargs: Any) -> Any:
        self.encoded += [text] if isinstance(text, str) else text
        return self._tokenizer(text, **kwargs)


@needs_shared_data
@pytest.mark.parametrize("chunk_rows", [256, 7])
def test_batched_tail_encoding_equals_encoding_the_whole_text(tokenizer: Any, chunk_rows: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("alignment.data.tokenize.ENCODE_CHUNK_ROWS", chunk_rows)
    rows = read_rows(HH_TEST, "preference", max_rows=60).rows
    recording = RecordingTokenizer(tokenizer)
    examples, stats = tokenize_dataset(recording, rows, 10**6)
    assert stats.kept == 60 and stats.truncated == 0
    multi_turn = 0
    for row, example in zip(rows, examples, strict=True):
        assert isinstance(row, PreferenceRow) and isinstance(example, TokenizedPair)
        prompt_text = render_prompt(tokenizer, row.messages)
        multi_turn += len(row.messages) > 1
        assert prompt_text + row.chosen not in recording.encoded  # a response is encoded after the tail only
        assert example.prompt_ids == encode_text(tokenizer, prompt_text)
        assert example.chosen_ids == whole_text_response_ids(tokenizer, prompt_text, row.chosen)
        assert example.rejected_ids == whole_text_response_ids(tokenizer, prompt_text, row.rejected)
        assert tokenize_preference(tokenizer, row, 10**6) == example
    assert multi_turn > 10  # dialogues with several special tokens, so the tail is a real suffix


def test_a_tail_off_a_token_boundary_falls_back_to_the_whole_text(tokenizer: Any) -> None:
    row = sft_row("What is the capital of France?", "Paris.")
    prompt_text = render_prompt(tokenizer, row.messages)
    tail = prompt_text[prompt_text.rfind("apital"):]
    prompt_ids = encode_text(tokenizer, prompt_text)
    tail_ids = encode_text(tokenizer, tail)
    assert prompt_ids[len(prompt_ids) - len(tail_ids):] != tail_ids  # precondition: "apital" is mid-token
    claimed = RecordingTokenizer(tokenizer, ["apital"])
    example = tokenize_sft(claimed, row, 64)
    assert example is not None and not example.prefix_fallback
    assert prompt_text + row.response in claimed.encoded
    assert example.input_ids == prompt_ids + whole_text_response_ids(tokenizer, prompt_text, row.response)


def test_stats_percentiles_are_hand_computed() -> None:
    # linear interpolation: p50 of 1..4 is 2.5; p95 sits at index 0.95 * 3 = 2.85 -> 3 + 0.85 = 3.85
    assert length_summary([4, 1, 3, 2]) == pytest.approx({"min": 1.0, "mean": 2.5, "p50": 2.5, "p95": 3.85,
                                                           "max": 4.0})
    assert length_summary([])["max"] == 0.0


def test_preview_marks_the_trained_span(tokenizer: Any) -> None:
    example = tokenize_sft(tokenizer, sft_row("Hi", "Hello."), 64)
    assert example is not None
    assert preview(tokenizer, example) == "<s><|user|>\nHi</s>\n<|assistant|>\n[[Hello.</s>]]"
    pair = tokenize_preference(tokenizer, parse_row({"prompt": "Hi", "chosen": "A", "rejected": "B"},
                                                    "preference"), 64)  # type: ignore[arg-type]
    assert pair is not None
    prompt = "<s><|user|>\nHi</s>\n<|assistant|>\n"
    assert preview(tokenizer, pair) == f"--- chosen ---\n{prompt}[[A</s>]]\n--- rejected ---\n{prompt}[[B</s>]]"


def test_argument_and_row_errors(tokenizer: Any) -> None:
    row = sft_row("Hi", "Hello.")
    with pytest.raises(ValueError, match="truncation"):
        tokenize_sft(tokenizer, row, 64, truncation="middle")
    with pytest.raises(TypeError, match="prompt row"):
        tokenize_dataset(tokenizer, [PromptRow(id="p", messages=row.messages)], 64)
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        tokenize_sft(no_eos, row, 64)
