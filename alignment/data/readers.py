"""Read rows from jsonl / json / parquet files, local ``datasets`` directories or Hub dataset ids; write jsonl.

Every record goes through :func:`alignment.data.formats.parse_row`, so a bad record is reported with its file,
line (``row`` for json/parquet/datasets) and field, or skipped and counted when ``on_bad_row="skip"``. Bytes that
are not UTF-8 make their record bad the same way (see :mod:`alignment.data.decoding`); a problem with a whole
file (missing, UTF-16, a JSON document broken mid-way) raises in either mode. Degenerate preference pairs are
dropped and duplicate rows counted (see :mod:`alignment.data.checks`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.data.checks import DUPLICATES, RowScreen
from alignment.data.decoding import (
    BLANK,
    MUST_BE_UTF8,
    UTF8_BOM,
    check_element,
    check_not_utf16,
    decode_document,
    describe_bytes,
    iter_json_list,
    parse_json_line,
)
from alignment.data.formats import KINDS, DataError, Location, parse_row
from alignment.data.rows import Row

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
SKIP_REASON_SAMPLES = 10
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_ARROW_BATCH_ROWS = 1024


@dataclass
class ReadResult:
    """Rows read from ``source``; ``skipped`` bad records, with up to 10 of their reasons in ``skip_reasons``.

    ``degenerate_pairs``: preference pairs dropped because chosen and rejected are the same response;
    ``duplicate_rows``: rows whose id was already read (dropped when ``duplicates == "drop"``, else kept);
    ``notes``: up to 10 located examples of each.
    """

    rows: list[Row]
    skipped: int
    source: str
    skip_reasons: list[str] = field(default_factory=list)
    degenerate_pairs: int = 0
    duplicate_rows: int = 0
    duplicates: str = "keep"
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """What was read and left out, JSON-serialisable, for manifests and dry-run reports."""
        return {"source": self.source, "rows_kept": len(self.rows), "skipped_bad_rows": self.skipped,
                "degenerate_pairs_dropped": self.degenerate_pairs, "duplicate_rows": self.duplicate_rows,
                "duplicates": self.duplicates}


@dataclass(frozen=True)
class _Record:
    """One raw record and where it came from; ``error`` is set when the record itself could not be decoded."""

    loc: Location
    value: Any = None
    error: DataError | None = None


def read_rows(
    path_or_id: str | Path,
    kind: str,
    split: str | None = None,
    on_bad_row: str = "error",
    max_rows: int | None = None,
    duplicates: str = "keep",
) -> ReadResult:
    """Read and convert rows of ``kind`` ("sft" | "preference" | "unpaired" | "prompt" | "auto").

    ``path_or_id``: a ``.jsonl``/``.json``/``.parquet`` file, a directory saved with ``datasets.save_to_disk``, a
    directory of data files (``split`` picks ``<split>.jsonl`` / ``<split>-*.parquet`` ...), or else a Hub dataset
    id. ``split`` defaults to "train" where there are several. ``max_rows`` stops after that many rows are kept.
    Preference pairs whose chosen and rejected are the same response are dropped; rows whose id was already read
    are counted and, with ``duplicates="drop"``, dropped (``"keep"``: kept). Everything left out is counted in
    the result.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row={on_bad_row!r}; expected one of {', '.join(ON_BAD_ROW)}")
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows={max_rows} must be >= 0")
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates={duplicates!r}; expected one of {', '.join(DUPLICATES)}")
    screen = RowScreen(duplicates)
    source, records = _open_source(str(path_or_id), split)
    result = ReadResult(rows=[], skipped=0, source=source, duplicates=duplicates)
    for record in records:
        if max_rows is not None and len(result.rows) >= max_rows:
            break
        try:
            row = _parse_record(record, kind)
        except DataError as exc:
            if on_bad_row == "error":
                raise
            result.skipped += 1
            if len(result.skip_reasons) < SKIP_REASON_SAMPLES:
                result.skip_reasons.append(str(exc))
            continue
        if screen.admit(row, record.loc):
            result.rows.append(row)
    result.degenerate_pairs, result.duplicate_rows, result.notes = (
        screen.degenerate_pairs, screen.duplicate_rows, screen.notes)
    _log_left_out(result)
    return result


def _parse_record(record: _Record, kind: str) -> Row:
    if record.error is not None:
        raise record.error
    loc = record.loc
    return parse_row(record.value, kind, loc.source, loc.line, loc.unit, loc.detail)


def _log_left_out(result: ReadResult) -> None:
    if result.skipped:
        logger.warning("%s: skipped %d bad rows, e.g. %s", result.source, result.skipped, result.skip_reasons[0])
    if result.degenerate_pairs:
        logger.warning("%s: dropped %d preference pairs whose chosen and rejected are the same response",
                       result.source, result.degenerate_pairs)
    if result.duplicate_rows:
        logger.warning("%s: %d rows repeat an earlier row id (%s)", result.source, result.duplicate_rows,
                       "dropped" if result.duplicates == "drop" else "kept; pass duplicates='drop' to drop them")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a jsonl file (blank lines ignored); errors name the 1-based line."""
    for record in _jsonl_records(Path(path)):
        if record.error is not None:
            raise record.error
        yield record.value


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any] | Row]) -> int:
    """Write rows (dicts or rows with ``to_dict()``) as UTF-8 jsonl; return the count.

    Written to ``<path>.tmp`` and renamed into place, so a reader never sees a half-written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    count = 0
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in rows:
                record = row if isinstance(row, dict) else row.to_dict()
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return count


# --- sources -----------------------------------------------------------------------------------------------


def _open_source(path_or_id: str, split: str | None) -> tuple[str, Iterator[_Record]]:
    """Resolve ``path_or_id`` to a description of what is read and an iterator over its records."""
    path = Path(path_or_id)
    if path.is_file():
        return str(path), _file_records(path)
    if path.is_dir():
        return _directory_source(path, split)
    if _looks_like_path(path_or_id):
        raise DataError(f"{path_or_id}: no such file or directory")
    return _hub_source(path_or_id, split)


def _looks_like_path(text: str) -> bool:
    """A missing local path should say 'not found', not try the Hub; Hub ids look like ``name`` or ``org/name``."""
    return (text.startswith((".", "/", "~")) or text.endswith(DATA_SUFFIXES) or text.count("/") > 1
            or os.sep != "/" and os.sep in text)


def _file_records(path: Path) -> Iterator[_Record]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_records(path)
    if suffix == ".json":
        return _json_list_records(path)
    if suffix == ".parquet":
        return _parquet_records(path)
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; expected .jsonl, .json or .parquet")


def _jsonl_records(path: Path) -> Iterator[_Record]:
    """One record per non-blank line, read as bytes so that a line that is not UTF-8 is one bad record."""
    offset = 0
    with open(path, "rb") as handle:
        for number, data in enumerate(handle, start=1):
            start = offset
            offset += len(data)
            if number == 1:
                check_not_utf16(str(path), data[:4])
            if data.startswith(UTF8_BOM):  # a file's BOM, or that of a file appended to this one
                data, start = data[len(UTF8_BOM):], start + len(UTF8_BOM)
            loc = Location(str(path), number)
            try:
                value = parse_json_line(data, loc, start)
            except DataError as exc:
                yield _Record(loc, error=exc)
                continue
            if value is BLANK:
                continue
            if not isinstance(value, dict):
                yield _Record(loc, error=DataError(f"{loc}: expected a JSON object, got {type(value).__name__}"))
                continue
            yield _Record(loc, value)


def _json_list_records(path: Path) -> Iterator[_Record]:
    """One record per element of a JSON list; each is located by its row number and the line it starts on."""
    text, has_bad_bytes = decode_document(str(path), path.read_bytes())
    for number, element in enumerate(iter_json_list(str(path), text), start=1):
        loc = Location(str(path), number, "row", f"line {element.line}")
        try:
            check_element(text, element, loc, has_bad_bytes)
        except DataError as exc:
            yield _Record(loc, error=exc)
            continue
        yield _Record(loc, element.value)


def _parquet_records(path: Path) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    return _arrow_records(pq.ParquetFile(path).iter_batches(batch_size=_ARROW_BATCH_ROWS), str(path))


def _arrow_records(batches: Iterable[Any], source: str) -> Iterator[_Record]:
    """Records of Arrow tables/record batches; a row whose text is not UTF-8 becomes one bad record."""
    number = 0
    for batch in batches:
        try:
            values: list[Any] | None = batch.to_pylist()
        except UnicodeDecodeError:  # Arrow does not validate strings it reads; find the bad rows one by one
            values = None
        for index in range(batch.num_rows):
            number += 1
            loc = Location(source, number, "row")
            yield _Record(loc, values[index]) if values is not None else _arrow_row(batch, index, loc)


def _arrow_row(batch: Any, index: int, loc: Location) -> _Record:
    value = {}
    for name in batch.column_names:
        try:
            value[name] = batch.column(name)[index].as_py()
        except UnicodeDecodeError as exc:
            bad = describe_bytes(exc.object[exc.start:exc.end])
            return _Record(loc, error=DataError(
                f"{loc}: field '{name}' is not valid UTF-8 ({bad} at position {exc.start + 1} of its text); "
                f"{MUST_BE_UTF8}"))
    return _Record(loc, value)


def _directory_source(path: Path, split: str | None) -> tuple[str, Iterator[_Record]]:
    if any((path / marker).exists() for marker in _DATASETS_MARKERS):
        return _saved_dataset_source(path, split)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    chosen = _files_for_split(path, files, split)
    return ", ".join(str(p) for p in chosen), _chain(_file_records(p) for p in chosen)


def _files_for_split(directory: Path, files: list[Path], split: str | None) -> list[Path]:
    """``<split>.jsonl`` or shards ``<split>-00000-of-00002.parquet``; a lone file when no split is given."""
    splits = sorted({p.stem.split("-")[0] for p in files})
    if not files:
        raise DataError(f"{directory}: no .jsonl, .json or .parquet files and no saved dataset")
    if split is None:
        if len(files) == 1:
            return files
        if "train" not in splits:
            raise DataError(f"{directory}: several splits ({', '.join(splits)}); pass split=...")
        split = "train"
    chosen = [p for p in files if p.stem == split or p.stem.startswith(f"{split}-")]
    if not chosen:
        raise DataError(f"{directory}: no files for split '{split}' (available: {', '.join(splits)})")
    return chosen


def _chain(iterators: Iterable[Iterator[_Record]]) -> Iterator[_Record]:
    for iterator in iterators:
        yield from iterator


def _saved_dataset_source(path: Path, split: str | None) -> tuple[str, Iterator[_Record]]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        names = sorted(loaded)
        if split is None:
            split = names[0] if len(names) == 1 else "train"
        if split not in loaded:
            raise DataError(f"{path}: no split '{split}' (available: {', '.join(names)})")
        return f"{path}[{split}]", _dataset_records(loaded[split], f"{path}[{split}]")
    return str(path), _dataset_records(loaded, str(path))


def _hub_source(dataset_id: str, split: str | None) -> tuple[str, Iterator[_Record]]:
    import datasets

    split = split or "train"
    try:
        dataset = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, unknown id, missing split: all become one readable error
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set, so the Hub cannot be reached)" if offline else ""
        raise DataError(f"{dataset_id}: not a local file or directory, and loading it as a Hugging Face Hub "
                        f"dataset (split '{split}') failed{hint}: {type(exc).__name__}: {exc}") from exc
    source = f"{dataset_id}[{split}]"
    return source, _dataset_records(dataset, source)


def _dataset_records(dataset: Any, source: str) -> Iterator[_Record]:
    """Rows of a ``datasets.Dataset`` read as Arrow tables (as stored: no feature decoding, UTF-8 checked)."""
    return _arrow_records(dataset.with_format("arrow").iter(batch_size=_ARROW_BATCH_ROWS), source)
