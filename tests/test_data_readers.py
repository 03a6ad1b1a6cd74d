"""Row formats (alpaca, HH-RLHF, UltraFeedback, chat, completion/label), row ids, and the file readers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from alignment.data.formats import DataError, parse_hh_dialogue, parse_row
from alignment.data.readers import read_jsonl, read_rows, write_jsonl
from alignment.data.rows import PreferenceRow, PromptRow, SFTRow, UnpairedRow, messages_id

SHARED_DATA = Path(os.environ.get("ALIGNMENT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# --- alpaca ------------------------------------------------------------------------------------------------


def test_alpaca_without_input_uses_the_instruction_alone() -> None:
    row = parse_row({"instruction": "Name a primary color.", "input": "", "output": "Blue."}, "sft")
    assert isinstance(row, SFTRow)
    assert row.messages == (user("Name a primary color."),)
    assert row.response == "Blue."
    assert row.meta == {}


def test_alpaca_input_is_appended_after_a_blank_line() -> None:
    row = parse_row({"instruction": "Translate to French.", "input": "cat", "output": "chat"}, "auto")
    assert isinstance(row, SFTRow)
    assert row.messages == (user("Translate to French.\n\ncat"),)
    assert row.response == "chat"


def test_instruction_alone_is_a_prompt_row_and_cannot_be_sft() -> None:
    row = parse_row({"instruction": "Write a haiku.", "dataset": "vicuna"}, "auto")
    assert isinstance(row, PromptRow)
    assert row.messages == (user("Write a haiku."),)
    assert row.meta == {"dataset": "vicuna"}
    with pytest.raises(DataError, match=r"^seeds.jsonl line 4: field 'output' is missing"):
        parse_row({"instruction": "Write a haiku."}, "sft", source="seeds.jsonl", line=4)


def test_prompt_kind_keeps_the_reference_output_in_meta() -> None:
    raw = {"instruction": "Say hi.", "output": "Hi!", "generator": "gpt4"}
    row = parse_row(raw, "prompt")
    assert isinstance(row, PromptRow)
    assert row.meta == {"output": "Hi!", "generator": "gpt4"}


# --- HH-RLHF -----------------------------------------------------------------------------------------------


def test_hh_dialogue_is_split_into_turns_and_the_final_assistant_is_the_generation_prompt() -> None:
    text = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant:"
    assert parse_hh_dialogue(text) == [user("Hi there"), assistant("Hello! How can I help?"),
                                       user("Tell me a joke.")]
    with pytest.raises(ValueError, match="ends with an assistant turn"):
        parse_hh_dialogue("\n\nHuman: Hi\n\nAssistant: Hello")


def test_hh_string_pair_strips_the_leading_space_of_responses() -> None:
    raw = {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " 4", "rejected": " 5 "}
    row = parse_row(raw, "preference")
    assert isinstance(row, PreferenceRow)
    assert row.messages == (user("What is 2+2?"),)
    assert (row.chosen, row.rejected) == ("4", "5")
    sft = parse_row({"prompt": raw["prompt"], "response": " 4"}, "sft")
    assert isinstance(sft, SFTRow) and sft.response == "4"
    assert parse_row({"prompt": "Q", "response": " 4"}, "sft").response == " 4"  # type: ignore[union-attr]


@needs_shared_data
def test_real_hh_row_parses_into_five_alternating_messages() -> None:
    # First row of hh_rlhf/test.jsonl, inspected by hand: three human turns, two assistant turns in between.
    raw = json.loads((SHARED_DATA / "hh_rlhf" / "test.jsonl").open(encoding="utf-8").readline())
    row = parse_row(raw, "preference", source="test.jsonl", line=1)
    assert isinstance(row, PreferenceRow)
    assert [m["role"] for m in row.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert row.messages[0]["content"] == ("I'm curious about skin conditions. Can you describe what acne is and "
                                          "what causes it?")
    assert row.messages[1]["content"].startswith("In the context of human skin, acne is a condition")
    assert row.messages[1]["content"].endswith("certain foods or stress.")
    assert row.messages[2]["content"] == "Where on the body does it show up?"
    assert row.messages[3]["content"] == ("Acne is most likely to occur on the face, though it can show up "
                                          "anywhere on the body, especially the back.")
    assert row.messages[4]["content"] == "So what happens exactly, what causes the skin to burst into a pimple?"
    assert row.chosen.startswith("Acne is a condition in which")
    assert row.rejected.startswith("Well, acne can be related")
    assert raw["chosen"] == " " + row.chosen and raw["rejected"] == " " + row.rejected


@needs_shared_data
def test_original_hh_transcripts_give_the_same_row_and_id_as_the_split_form() -> None:
    raw = json.loads((SHARED_DATA / "hh_rlhf" / "test.jsonl").open(encoding="utf-8").readline())
    transcripts = {"chosen": raw["prompt"] + raw["chosen"], "rejected": raw["prompt"] + raw["rejected"]}
    assert parse_row(transcripts, "preference") == parse_row(raw, "preference")


# --- UltraFeedback / chat / completion formats -------------------------------------------------------------


def test_ultrafeedback_message_lists_use_the_final_assistant_message_as_the_response() -> None:
    chosen = [user("What is 2+2?"), assistant("4")]
    raw = {"prompt": "What is 2+2?", "prompt_id": "abc", "chosen": chosen,
           "rejected": [user("What is 2+2?"), assistant("5")], "messages": chosen,
           "score_chosen": 9.0, "score_rejected": 2.0}
    row = parse_row(raw, "auto")
    assert isinstance(row, PreferenceRow)
    assert row.messages == (user("What is 2+2?"),)
    assert (row.chosen, row.rejected) == ("4", "5")
    assert row.meta == {"prompt_id": "abc", "score_chosen": 9.0, "score_rejected": 2.0}


def test_preference_lists_with_different_prompts_are_rejected() -> None:
    raw = {"chosen": [user("A?"), assistant("a")], "rejected": [user("B?"), assistant("b")]}
    with pytest.raises(DataError, match=r"^uf.jsonl line 2: field 'rejected' has a different conversation"):
        parse_row(raw, "preference", source="uf.jsonl", line=2)


def test_conversational_prompt_list_with_response_only_lists() -> None:
    raw = {"prompt": [{"role": "system", "content": "Be brief."}, user("Hi")],
           "chosen": [assistant("Hello.")], "rejected": [assistant("Go away.")]}
    row = parse_row(raw, "preference")
    assert row.messages == ({"role": "system", "content": "Be brief."}, user("Hi"))
    assert isinstance(row, PreferenceRow) and row.chosen == "Hello."


def test_messages_rows_ending_with_assistant_are_sft_and_ending_with_user_are_prompts() -> None:
    conversation = [{"role": "system", "content": "S"}, user("Q1"), assistant("A1"), user("Q2")]
    sft = parse_row({"messages": [*conversation, assistant("A2")]}, "auto")
    assert isinstance(sft, SFTRow)
    assert sft.messages == tuple(conversation) and sft.response == "A2"
    prompt = parse_row({"messages": conversation}, "auto")
    assert isinstance(prompt, PromptRow) and prompt.messages == tuple(conversation)
    as_prompt = parse_row({"messages": [*conversation, assistant("A2")]}, "prompt")
    assert as_prompt.messages == tuple(conversation) and as_prompt.meta == {"response": "A2"}


def test_completion_response_and_label_formats() -> None:
    assert parse_row({"prompt": "Q", "completion": "A"}, "auto") == parse_row({"prompt": "Q", "response": "A"}, "sft")
    good = parse_row({"prompt": "Q", "completion": "A", "label": True}, "auto")
    bad = parse_row({"prompt": "Q", "completion": "B", "label": 0}, "unpaired")
    assert isinstance(good, UnpairedRow) and good.label is True and good.completion == "A"
    assert isinstance(bad, UnpairedRow) and bad.label is False
    alone = parse_row({"prompt": "Q"}, "auto")
    assert isinstance(alone, PromptRow) and alone.messages == (user("Q"),)


def test_to_dict_reads_back_to_the_same_row() -> None:
    rows = [
        parse_row({"instruction": "I", "input": "x", "output": "O", "family": "arith"}, "sft"),
        parse_row({"prompt": "\n\nHuman: Q\n\nAssistant:", "chosen": " a", "rejected": " b"}, "preference"),
        parse_row({"prompt": "Q", "completion": "A", "label": False, "corrupted": True}, "unpaired"),
        parse_row({"messages": [user("Q")], "id": "p-1", "answer": 3}, "prompt"),
    ]
    for row in rows:
        assert parse_row(json.loads(json.dumps(row.to_dict())), "auto") == row


# --- bad rows and ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        ({"prompt": "Q", "rejected": "b"}, "auto",
         "field 'chosen' is missing (expected prompt/chosen/rejected)"),
        ({"prompt": "Q", "completion": "A"}, "preference",
         "field 'chosen' is missing (expected prompt/chosen/rejected; the row has fields completion, prompt)"),
        ({"prompt": "Q", "chosen": "  ", "rejected": "b"}, "auto", "field 'chosen' is empty or whitespace-only"),
        ({"instruction": "I", "output": "\n"}, "sft", "field 'output' is empty or whitespace-only"),
        ({"messages": [user("Q"), {"role": "bot", "content": "A"}]}, "auto", "field 'messages[1].role' is 'bot'"),
        ({"messages": [user("Q"), assistant("A")]}, "unpaired", "field 'completion' is missing"),
        ({"prompt": "Q", "completion": "A", "label": "yes"}, "auto", "field 'label' must be true/false"),
        ({"text": "hello"}, "auto", "field 'prompt' is missing: no 'messages', 'prompt' or 'instruction'"),
    ],
)
def test_bad_rows_name_file_line_and_field(raw: dict, kind: str, message: str) -> None:
    with pytest.raises(DataError) as error:
        parse_row(raw, kind, source="hh.jsonl", line=17)
    assert str(error.value).startswith(f"hh.jsonl line 17: {message}")


def test_ids_are_content_hashes_unless_the_row_has_its_own() -> None:
    raw = {"instruction": "Name a primary color.", "input": "", "output": "Blue."}
    row = parse_row(raw, "sft")
    content = {"messages": [{"content": "Name a primary color.", "role": "user"}], "response": "Blue."}
    expected = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert row.id == expected
    # equal content gives an equal id whatever the format; meta is not content
    assert parse_row({"messages": [user("Name a primary color."), assistant("Blue.")], "x": 1}, "sft").id == expected
    assert parse_row({**raw, "output": "Red."}, "sft").id != expected
    assert parse_row({**raw, "id": 7}, "sft").id == "7"
    prompt = parse_row({"prompt": "Name a primary color."}, "prompt")
    assert prompt.id == messages_id([user("Name a primary color.")])


# --- readers -----------------------------------------------------------------------------------------------

ALPACA_ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Reverse the word.", "input": "abc", "output": "cba"},
    {"instruction": "Sort the numbers.", "input": "3 1 2", "output": "1 2 3"},
]


def expected_alpaca_rows() -> list[SFTRow]:
    return [parse_row(raw, "sft") for raw in ALPACA_ROWS]  # type: ignore[misc]


def test_write_jsonl_is_atomic_and_read_jsonl_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl(path, ALPACA_ROWS) == 3
    assert not (tmp_path / "sub" / "rows.jsonl.tmp").exists()
    assert list(read_jsonl(path)) == ALPACA_ROWS
    written = expected_alpaca_rows()
    write_jsonl(path, written)  # rows are written with to_dict()
    assert read_rows(path, "sft").rows == written


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def rows():
        yield {"a": 1}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "out.jsonl", rows())
    assert list(tmp_path.iterdir()) == []


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path} line 3: invalid JSON"):
        list(read_jsonl(path))


def test_jsonl_json_and_parquet_files_read_the_same_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    (tmp_path / "a.json").write_text(json.dumps(ALPACA_ROWS), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ALPACA_ROWS), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.parquet"):
        result = read_rows(tmp_path / name, "sft")
        assert result.rows == expected_alpaca_rows(), name
        assert result.skipped == 0 and result.source == str(tmp_path / name)
    assert len(read_rows(tmp_path / "a.parquet", "sft", max_rows=2).rows) == 2


def test_save_to_disk_directories_round_trip(tmp_path: Path) -> None:
    import datasets

    dataset = datasets.Dataset.from_list(ALPACA_ROWS)
    dataset.save_to_disk(str(tmp_path / "single"))
    assert read_rows(tmp_path / "single", "sft").rows == expected_alpaca_rows()
    datasets.DatasetDict({"train": dataset, "test": dataset.select([1])}).save_to_disk(str(tmp_path / "dict"))
    assert read_rows(tmp_path / "dict", "sft").rows == expected_alpaca_rows()  # defaults to train
    assert read_rows(tmp_path / "dict", "sft", split="test").rows == expected_alpaca_rows()[1:2]
    with pytest.raises(DataError, match="no split 'validation'"):
        read_rows(tmp_path / "dict", "sft", split="validation")


def test_directory_of_split_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ALPACA_ROWS[:2])
    write_jsonl(tmp_path / "test.jsonl", ALPACA_ROWS[2:])
    assert read_rows(tmp_path, "sft").rows == expected_alpaca_rows()[:2]
    assert read_rows(tmp_path, "sft", split="test").rows == expected_alpaca_rows()[2:]
    with pytest.raises(DataError, match=r"no files for split 'dev' \(available: test, train\)"):
        read_rows(tmp_path, "sft", split="dev")


def test_bad_rows_raise_or_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "hh.jsonl"
    lines = [
        {"prompt": "Q1", "chosen": "a", "rejected": "b"},
        {"prompt": "Q2", "chosen": "a", "rejected": "b"},
        {"prompt": "Q3", "rejected": "b"},  # line 3: no chosen
        {"prompt": "Q4", "chosen": "a", "rejected": "b"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_rows(path, "preference")
    assert str(error.value) == f"{path} line 3: field 'chosen' is missing (expected prompt/chosen/rejected)"
    result = read_rows(path, "preference", on_bad_row="skip")
    assert [row.messages[0]["content"] for row in result.rows] == ["Q1", "Q2", "Q4"]
    assert result.skipped == 2
    assert result.skip_reasons[0].startswith(f"{path} line 3: field 'chosen'")
    assert result.skip_reasons[1].startswith(f"{path} line 5: invalid JSON")


def test_missing_paths_and_unreachable_hub_ids_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        read_rows(tmp_path / "missing.jsonl", "sft")
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("the Hub id check needs HF_HUB_OFFLINE=1 so that it cannot reach the network")
    with pytest.raises(DataError, match="not a local file or directory, and loading it as a Hugging Face Hub"):
        read_rows("no-such-org/no-such-dataset", "sft")


@needs_shared_data
@pytest.mark.parametrize(
    ("relative", "kind", "count"),
    [
        ("hh_rlhf/train.jsonl", "preference", 4000),
        ("hh_rlhf/test.jsonl", "preference", 500),
        ("hh_rlhf/harmless_test.jsonl", "preference", 500),
        ("alpaca_cleaned/train.jsonl", "sft", 6000),
        ("alpaca_cleaned/test.jsonl", "sft", 500),
        ("alpaca_gpt4/train.jsonl", "sft", 685),
        ("alpaca_gpt4/test.jsonl", "sft", 150),
        ("alpaca_eval/eval_set.jsonl", "prompt", 805),
        ("self_instruct_seed/seed_tasks.jsonl", "prompt", 175),
    ],
)
def test_shared_data_files_read_without_bad_rows(relative: str, kind: str, count: int) -> None:
    result = read_rows(SHARED_DATA / relative, kind)
    assert (len(result.rows), result.skipped, result.degenerate_pairs, result.duplicate_rows) == (count, 0, 0, 0)
    assert len({row.id for row in result.rows}) == count
