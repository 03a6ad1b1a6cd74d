"""Bytes of a data file to JSON values, with errors that say where the bad bytes are.

Data files must be UTF-8. A UTF-8 byte-order mark (written by some Windows tools) is accepted at the start of a
file and, for jsonl, at the start of any line (files joined with ``cat`` keep theirs); UTF-16/UTF-32 files are
refused as a whole. Bytes that are not UTF-8 and JSON ``\\ud800``-style escapes of lone surrogates (valid JSON,
but not text: they cannot be hashed, written back as UTF-8 or tokenized) make the record bad, with a
:class:`DataError` naming the file, the line and, where the JSON around them parses, the field.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from alignment.data.formats import DataError, Location

UTF8_BOM = b"\xef\xbb\xbf"
MUST_BE_UTF8 = "data files must be UTF-8 encoded"
# Longest first: the UTF-32 little-endian mark begins with the UTF-16 one.
_OTHER_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"),
               (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# surrogateescape decodes an undecodable byte b to the lone surrogate U+DC00 + b (b >= 0x80).
_ESCAPED_BYTES = range(0xDC80, 0xDD00)
BLANK = object()  # what parse_json_line returns for a line with nothing on it


def check_not_utf16(source: str, head: bytes) -> None:
    """Refuse a file that starts with a UTF-16 or UTF-32 byte-order mark (every line would be bad)."""
    for mark, name in _OTHER_BOMS:
        if head.startswith(mark):
            raise DataError(f"{source}: starts with a {name} byte-order mark; {MUST_BE_UTF8} (re-save it as UTF-8)")


def json_error_text(exc: json.JSONDecodeError) -> str:
    """``Expecting ',' delimiter at column 7``: the decoder's message (several end in "at") said once."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


# --- jsonl -----------------------------------------------------------------------------------------------


def parse_json_line(data: bytes, loc: Location, offset: int) -> Any:
    """The JSON value of one jsonl line (``data`` without its BOM; ``offset``: its first byte in the file).

    Returns :data:`BLANK` for a blank line. Raises :class:`DataError` for bytes that are not UTF-8 (with the field,
    the column and the byte offset in the file), for invalid JSON and for lone-surrogate escapes.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_utf8_line(data, loc, offset, exc) from None
    if not text.strip():
        return BLANK
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{loc}: invalid JSON ({json_error_text(exc)})") from None
    if _SURROGATE_ESCAPE.search(text):
        check_no_surrogates(value, loc)
    return value


def _bad_utf8_line(data: bytes, loc: Location, offset: int, exc: UnicodeDecodeError) -> DataError:
    column = len(data[: exc.start].decode("utf-8")) + 1  # everything before the first bad byte decodes
    where = f"{describe_bytes(data[exc.start:exc.end])} at column {column}, byte offset {offset + exc.start} in the file"
    found = None
    with contextlib.suppress(json.JSONDecodeError):  # the bad bytes are outside any string, or the line is broken
        found = first_surrogate(json.loads(data.decode("utf-8", "surrogateescape")))
    subject = _subject(found[0]) if found and found[0] else "the line"
    return DataError(f"{loc}: {subject} is not valid UTF-8 ({where}); {MUST_BE_UTF8}")


def describe_bytes(data: bytes) -> str:
    """``byte 0xff`` or ``bytes 0xe2 0x82``."""
    return ("byte " if len(data) == 1 else "bytes ") + " ".join(f"0x{byte:02x}" for byte in data)


# --- json documents --------------------------------------------------------------------------------------


def decode_document(source: str, data: bytes) -> tuple[str, bool]:
    """Text of a whole JSON file (BOM removed) and whether it holds bytes that are not UTF-8.

    Undecodable bytes become lone surrogates (``surrogateescape``) so that the rows around them still parse; the
    rows holding them are then reported by :func:`check_element`.
    """
    check_not_utf16(source, data[:4])
    data = data.removeprefix(UTF8_BOM)
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


@dataclass(frozen=True)
class Element:
    """One element of a JSON list document: its value, its span in the text and the line it starts on."""

    value: Any
    start: int
    end: int
    line: int
    line_start: int  # index of the first character of that line


def iter_json_list(source: str, text: str) -> Iterator[Element]:
    """The elements of a JSON list document, each with the line it starts on.

    Raises :class:`DataError` when the document is not a list or not valid JSON (a JSON document cannot be read
    past its first syntax error, so that error ends the file).
    """
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        value = _whole_document(source, text)
        raise DataError(f"{source}: expected a JSON list of objects, got {type(value).__name__}")
    line, line_start, counted = 1, 0, 0
    position = _skip_space(text, position + 1)
    closed = text.startswith("]", position)
    while not closed:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise _document_error(source, exc) from None
        newlines = text.count("\n", counted, position)
        if newlines:
            line, line_start = line + newlines, text.rfind("\n", counted, position) + 1
        counted = position
        yield Element(value, position, end, line, line_start)
        position = _skip_space(text, end)
        closed = text.startswith("]", position)
        if not closed and not text.startswith(",", position):
            raise _document_error(source, json.JSONDecodeError("Expecting ',' delimiter", text, position))
        if not closed:
            position = _skip_space(text, position + 1)
    rest = _skip_space(text, position + 1)
    if rest != len(text):
        raise _document_error(source, json.JSONDecodeError("Extra data", text, rest))


def _skip_space(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def _whole_document(source: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _document_error(source, exc) from None


def _document_error(source: str, exc: json.JSONDecodeError) -> DataError:
    """Invalid JSON, or an undecodable byte outside any string (the parser stops there)."""
    bad = exc.doc[exc.pos] if exc.pos < len(exc.doc) else ""
    if bad and ord(bad) in _ESCAPED_BYTES:
        return DataError(f"{source} line {exc.lineno}: {describe_bytes(bytes([ord(bad) - 0xDC00]))} at column {exc.colno} "
                         f"is not valid UTF-8; {MUST_BE_UTF8}")
    return DataError(f"{source} line {exc.lineno}: invalid JSON ({json_error_text(exc)})")


# --- lone surrogates -------------------------------------------------------------------------------------


def check_no_surrogates(value: Any, loc: Location) -> None:
    """Raise :class:`DataError` naming the first field whose key or text holds a lone surrogate escape."""
    found = first_surrogate(value)
    if found is not None:
        _surrogate_error(loc, *found)


def check_element(text: str, element: Element, loc: Location, has_bad_bytes: bool) -> None:
    """Like :func:`check_no_surrogates` for an element of a document decoded by :func:`decode_document`.

    When the document held undecodable bytes, a surrogate U+DC80..U+DCFF found in the element's text is such a
    byte, reported with its line and column.
    """
    may_hold = _SURROGATE_ESCAPE.search(text, element.start, element.end) or (
        has_bad_bytes and _SURROGATE.search(text, element.start, element.end))
    found = first_surrogate(element.value) if may_hold else None
    if found is None:
        return
    path, char = found
    index = text.find(char, element.start, element.end) if has_bad_bytes and ord(char) in _ESCAPED_BYTES else -1
    if index < 0:
        _surrogate_error(loc, path, char)
    line = element.line + text.count("\n", element.start, index)
    newline = text.rfind("\n", element.start, index)
    column = index - newline if newline >= 0 else index - element.line_start + 1
    raise DataError(f"{loc}: {_subject(path)} is not valid UTF-8 ({describe_bytes(bytes([ord(char) - 0xDC00]))} at line "
                    f"{line}, column {column}); {MUST_BE_UTF8}")


def _surrogate_error(loc: Location, path: str, char: str) -> NoReturn:
    raise DataError(f"{loc}: {_subject(path)} contains the lone surrogate escape '\\u{ord(char):04x}', which is "
                    f"not text (a surrogate must be half of a pair)")


def _subject(path: str) -> str:
    return f"field '{path}'" if path else "the row"


def first_surrogate(value: Any, path: str = "") -> tuple[str, str] | None:
    """``(field path, surrogate)`` of the first lone surrogate in a JSON value, e.g. ``("chosen[1].content", c)``."""
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        return (path, match.group()) if match else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else key
            match = _SURROGATE.search(key)
            found = (inner, match.group()) if match else first_surrogate(item, inner)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = first_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
