"""Readers against bad bytes, byte-order marks, malformed JSON, degenerate pairs and duplicate rows."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest

from alignment.data.formats import DataError, parse_row
from alignment.data.readers import read_jsonl, read_rows, write_jsonl

MUST = "data files must be UTF-8 encoded"


def jsonl_bytes(*records: dict) -> list[bytes]:
    return [json.dumps(record).encode("utf-8") + b"\n" for record in records]


def sft(instruction: str, output: str) -> dict:
    return {"instruction": instruction, "input": "", "output": output}


def outputs(rows: list) -> list[str]:
    return [row.response for row in rows]


# --- bytes that are not UTF-8 ------------------------------------------------------------------------------


def test_jsonl_bad_byte_names_file_line_field_column_and_offset_and_is_skipped(tmp_path: Path) -> None:
    first, third = jsonl_bytes(sft("A", "a"), sft("C", "c"))
    bad = b'{"instruction": "B", "output": "caf\xc3\xa9 \xe9t\xe9"}\n'  # Latin-1 "\xe9" after a UTF-8 "é"
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(first + bad + third)
    index = bad.index(b"\xe9t")
    column = len(bad[:index].decode("utf-8")) + 1  # characters, as in JSON error columns: "é" is one
    assert column == index  # one less than the byte position + 1, because "é" takes two bytes
    expected = (f"{path} line 2: field 'output' is not valid UTF-8 (byte 0xe9 at column {column}, byte offset "
                f"{len(first) + index} in the file); {MUST}")
    with pytest.raises(DataError) as error:
        read_rows(path, "sft")
    assert str(error.value) == expected
    result = read_rows(path, "sft", on_bad_row="skip")
    assert outputs(result.rows) == ["a", "c"]
    assert result.skipped == 1 and result.skip_reasons == [expected]
    with pytest.raises(DataError, match="line 2: field 'output' is not valid UTF-8"):
        list(read_jsonl(path))


def test_jsonl_bad_byte_outside_a_string_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tail.jsonl"
    path.write_bytes(b'{"prompt": "Q"}\xff\n')
    with pytest.raises(DataError) as error:
        read_rows(path, "prompt")
    assert str(error.value) == (f"{path} line 1: the line is not valid UTF-8 (byte 0xff at column 16, byte offset "
                                f"15 in the file); {MUST}")


def test_lone_surrogate_escapes_are_bad_rows_but_surrogate_pairs_are_text(tmp_path: Path) -> None:
    path = tmp_path / "escapes.jsonl"
    path.write_text('{"instruction": "A", "output": "x\\ud800y"}\n'
                    '{"instruction": "B", "output": "smile \\ud83d\\ude00"}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_rows(path, "sft")
    assert str(error.value).startswith(f"{path} line 1: field 'output' contains the lone surrogate escape '\\ud800'")
    result = read_rows(path, "sft", on_bad_row="skip")
    assert outputs(result.rows) == ["smile \U0001f600"] and result.skipped == 1
    write_jsonl(tmp_path / "out.jsonl", result.rows)  # what is read can be written back as UTF-8


def test_utf16_files_are_refused_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "utf16.jsonl"
    path.write_bytes('{"prompt": "Q"}\n'.encode("utf-16"))  # with its byte-order mark
    for on_bad_row in ("error", "skip"):
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: starts with a UTF-16 byte-order mark; {MUST}"):
            read_rows(path, "prompt", on_bad_row=on_bad_row)


def test_directory_of_files_skips_the_bad_line_of_one_file_and_reads_the_rest(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train-00000-of-00002.jsonl", [sft("A", "a"), sft("B", "b")])
    bad = b'{"instruction": "C", "output": "\xff"}\n'
    (tmp_path / "train-00001-of-00002.jsonl").write_bytes(bad + b"".join(jsonl_bytes(sft("D", "d"))))
    result = read_rows(tmp_path, "sft", on_bad_row="skip")
    assert outputs(result.rows) == ["a", "b", "d"] and result.skipped == 1
    assert result.skip_reasons[0].startswith(f"{tmp_path / 'train-00001-of-00002.jsonl'} line 1: field 'output'")


def test_json_document_bad_byte_in_a_row_names_row_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    text = b'[\n  {"instruction": "A", "output": "a"},\n  {"instruction": "B",\n   "output": "b\xff"},\n' \
           b'  {"instruction": "C", "output": "c"}\n]\n'
    path.write_bytes(text)
    # row 2 starts on line 3; the byte is on line 4: '   "output": "b' is 15 characters before it
    expected = f"{path} row 2 (line 3): field 'output' is not valid UTF-8 (byte 0xff at line 4, column 16); {MUST}"
    with pytest.raises(DataError) as error:
        read_rows(path, "sft")
    assert str(error.value) == expected
    result = read_rows(path, "sft", on_bad_row="skip")
    assert outputs(result.rows) == ["a", "c"] and result.skip_reasons == [expected]


def test_json_document_bad_byte_outside_strings_and_lone_surrogates(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'[{"prompt": "Q"},\n \xff{"prompt": "R"}]')
    with pytest.raises(DataError) as error:
        read_rows(path, "prompt", on_bad_row="skip")  # a JSON document cannot be read past a syntax error
    assert str(error.value) == f"{path} line 2: byte 0xff at column 2 is not valid UTF-8; {MUST}"
    path.write_bytes(b'[{"prompt": "Q"},\n {"prompt": "R"}, {"prompt": "\xff"}]')
    result = read_rows(path, "prompt", on_bad_row="skip")
    assert len(result.rows) == 2  # ' {"prompt": "R"}, {"prompt": "' is 30 characters before the byte
    assert result.skip_reasons == [f"{path} row 3 (line 2): field 'prompt' is not valid UTF-8 (byte 0xff at line 2, "
                                   f"column 31); {MUST}"]
    path.write_text('[{"prompt": "Q"}, {"prompt": "\\udcff"}]', encoding="utf-8")
    result = read_rows(path, "prompt", on_bad_row="skip")
    assert len(result.rows) == 1
    assert result.skip_reasons[0].startswith(f"{path} row 2 (line 1): field 'prompt' contains the lone surrogate")


def invalid_utf8_strings(values: list[bytes]) -> object:
    """An Arrow string array holding ``values`` unchecked (pyarrow itself refuses to build invalid strings)."""
    import pyarrow as pa

    offsets = [0]
    for value in values:
        offsets.append(offsets[-1] + len(value))
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.array(offsets, pa.int32()).buffers()[1],
                                                            pa.py_buffer(b"".join(values))])


def test_parquet_and_saved_datasets_with_bad_bytes_name_the_row_and_field(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"instruction": pa.array(["A", "B", "C"]),
                      "output": invalid_utf8_strings([b"a", b"b\xff", b"c"])})
    pq.write_table(table, tmp_path / "rows.parquet")
    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "rows.parquet", tmp_path / "saved"):
        expected = f"{source} row 2: field 'output' is not valid UTF-8 (byte 0xff at position 2 of its text); {MUST}"
        with pytest.raises(DataError) as error:
            read_rows(source, "sft")
        assert str(error.value) == expected
        result = read_rows(source, "sft", on_bad_row="skip")
        assert outputs(result.rows) == ["a", "c"] and result.skip_reasons == [expected]


# --- byte-order marks --------------------------------------------------------------------------------------


def test_utf8_bom_is_accepted_in_jsonl_and_json(tmp_path: Path) -> None:
    rows = [sft("A", "a"), sft("B", "b")]
    bom = b"\xef\xbb\xbf"
    (tmp_path / "bom.jsonl").write_bytes(bom + b"".join(jsonl_bytes(*rows)))
    (tmp_path / "bom.json").write_bytes(bom + json.dumps(rows).encode("utf-8"))
    # two files joined with cat: the second file's BOM starts line 3
    (tmp_path / "joined.jsonl").write_bytes(2 * (bom + b"".join(jsonl_bytes(*rows))))
    expected = [parse_row(row, "sft") for row in rows]
    for name, count in (("bom.jsonl", 1), ("bom.json", 1), ("joined.jsonl", 2)):
        result = read_rows(tmp_path / name, "sft", on_bad_row="skip")
        assert result.rows == expected * count and result.skipped == 0, name
    assert list(read_jsonl(tmp_path / "bom.jsonl")) == rows


# --- JSON error wording ------------------------------------------------------------------------------------

DOUBLED_WORD = re.compile(r"\b(\w+) \1\b")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"prompt": "Q\x01"}', r"Invalid control character .*at column 14"),
        ('{"prompt": "Q', "Unterminated string starting at column 12"),
        ('{"prompt": }', "Expecting value at column 12"),
        ('{"prompt": "Q"} x', "Extra data at column 17"),
        ('{"prompt": "\\q"}', r"Invalid \\escape.* at column 13"),
        ('{"prompt": "Q" "x": 1}', "Expecting ',' delimiter at column 16"),
        ('{"prompt": "Q",}', "Expecting property name enclosed in double quotes at column 16"),
        ('{"prompt" "Q"}', "Expecting ':' delimiter at column 11"),
    ],
)
def test_json_errors_say_what_and_which_column_once(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line, encoding="utf-8")  # the last line: no newline to end a string
    with pytest.raises(DataError) as error:
        read_rows(path, "prompt")
    message = str(error.value)
    assert re.fullmatch(rf"{re.escape(str(path))} line 2: invalid JSON \({problem}\)", message), message
    assert not DOUBLED_WORD.search(message.removeprefix(str(path))), message
    document = tmp_path / "bad.json"
    document.write_text('[{"prompt": "ok"},\n' + line + "]", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_rows(document, "prompt")
    assert re.match(rf"{re.escape(str(document))} line 2: invalid JSON \(.* at column \d+\)$", str(error.value))
    assert not DOUBLED_WORD.search(str(error.value).removeprefix(str(document))), str(error.value)


# --- degenerate pairs and duplicates -----------------------------------------------------------------------


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_degenerate_pairs_are_dropped_and_counted(tmp_path: Path) -> None:
    composed, decomposed = "café", unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    records = [
        pair("Q1", "good", "bad"),
        pair("Q2", "same", "same"),                                  # line 2: identical
        pair("Q3", "Paris.", "  Paris.\n"),                          # line 3: surrounding whitespace only
        pair("Q4", "one\r\ntwo", "one\ntwo"),                        # line 4: line endings only
        pair("Q5", composed, decomposed),                            # line 5: canonically equivalent
        pair("\n\nHuman: Q6\n\nAssistant:", " yes", "yes "),         # line 6: HH responses are stripped anyway
        pair("Q7", "def f():\n    return 1", "def f():\n  return 1"),  # internal whitespace is content: kept
    ]
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, records)
    for kind in ("preference", "auto"):
        result = read_rows(path, kind)
        assert [row.messages[0]["content"] for row in result.rows] == ["Q1", "Q7"], kind
        assert result.degenerate_pairs == 5 and result.skipped == 0
        assert result.notes[0] == f"{path} line 2: dropped: 'chosen' and 'rejected' are the same response"
        assert [note.split(":")[0] for note in result.notes] == [f"{path} line {n}" for n in range(2, 7)]
    prompts = read_rows(path, "prompt")  # prompts of a preference file: nothing is trained on the pair
    assert len(prompts.rows) == 7 and prompts.degenerate_pairs == 0
    assert len(read_rows(path, "preference", max_rows=2).rows) == 2  # max_rows counts rows kept


def test_duplicate_rows_are_counted_and_dropped_on_request(tmp_path: Path) -> None:
    a, b, c = sft("A", "a"), sft("B", "b"), sft("C", "c")
    own, clash = {**sft("D", "d"), "id": "x-1"}, {**sft("E", "e"), "id": "x-1"}
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [a, b, a, c, b, own, clash])
    kept = read_rows(path, "sft")
    assert outputs(kept.rows) == ["a", "b", "a", "c", "b", "d", "e"]
    assert kept.duplicate_rows == 3 and kept.duplicates == "keep"
    a_id = kept.rows[0].id
    assert kept.notes[0] == f"{path} line 3: kept: same row id {a_id!r} as {path} line 1"
    assert kept.notes[2] == f"{path} line 7: kept: same row id 'x-1' as {path} line 6 but different content"
    dropped = read_rows(path, "sft", duplicates="drop")
    assert outputs(dropped.rows) == ["a", "b", "c", "d"]
    assert dropped.counts() == {"source": str(path), "rows_kept": 4, "skipped_bad_rows": 0,
                                "degenerate_pairs_dropped": 0, "duplicate_rows": 3, "duplicates": "drop"}
    assert dropped.notes[0].startswith(f"{path} line 3: dropped: same row id")
    assert outputs(read_rows(path, "sft", duplicates="drop", max_rows=3).rows) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="duplicates='twice'"):
        read_rows(path, "sft", duplicates="twice")


def test_data_error_is_exported_and_its_message_always_prints(tmp_path: Path) -> None:
    import alignment.data
    from alignment.data import formats

    assert alignment.data.DataError is formats.DataError
    assert issubclass(alignment.data.DataError, ValueError)
    path = tmp_path / "keys.jsonl"
    path.write_text('{"prompt": "Q", "k\\udcff": 1}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_rows(path, "prompt")
    assert str(error.value).startswith(f"{path} line 1: field 'k\\udcff' contains the lone surrogate escape")
    str(error.value).encode("utf-8")  # no lone surrogate left in the message itself
    assert str(DataError(f"{tmp_path}/caf\udce9.jsonl: no such file")) == f"{tmp_path}/caf\\udce9.jsonl: no such file"
