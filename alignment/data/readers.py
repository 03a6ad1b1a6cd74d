"""Read rows from jsonl / json / parquet files, local ``datasets`` directories or Hub dataset ids; write jsonl.

Every record goes through :func:`alignment.data.formats.parse_row`, so a bad record is reported with its file,
line (``row`` for json/parquet/datasets) and field, or skipped and counted when ``on_bad_row="skip"``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.data.formats import KINDS, DataError, Location, parse_row
from alignment.data.rows import Row

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
SKIP_REASON_SAMPLES = 10
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class ReadResult:
    """Rows read from ``source``; ``skipped`` bad records, with up to 10 of their reasons in ``skip_reasons``."""

    rows: list[Row]
    skipped: int
    source: str
    skip_reasons: list[str] = field(default_factory=list)


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
) -> ReadResult:
    """Read and convert rows of ``kind`` ("sft" | "preference" | "unpaired" | "prompt" | "auto").

    ``path_or_id``: a ``.jsonl``/``.json``/``.parquet`` file, a directory saved with ``datasets.save_to_disk``, a
    directory of data files (``split`` picks ``<split>.jsonl`` / ``<split>-*.parquet`` ...), or else a Hub dataset
    id. ``split`` defaults to "train" where there are several. ``max_rows`` stops after that many good rows.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown row kind {kind!r}; expected one of {', '.join(KINDS)}")
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row={on_bad_row!r}; expected one of {', '.join(ON_BAD_ROW)}")
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows={max_rows} must be >= 0")
    source, records = _open_source(str(path_or_id), split)
    result = ReadResult(rows=[], skipped=0, source=source)
    for record in records:
        if max_rows is not None and len(result.rows) >= max_rows:
            break
        try:
            if record.error is not None:
                raise record.error
            loc = record.loc
            result.rows.append(parse_row(record.value, kind, loc.source, loc.line, loc.unit))
        except DataError as exc:
            if on_bad_row == "error":
                raise
            result.skipped += 1
            if len(result.skip_reasons) < SKIP_REASON_SAMPLES:
                result.skip_reasons.append(str(exc))
    if result.skipped:
        logger.warning("%s: skipped %d bad rows, e.g. %s", source, result.skipped, result.skip_reasons[0])
    return result


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
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            loc = Location(str(path), number)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield _Record(loc, error=DataError(f"{loc}: invalid JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(value, dict):
                yield _Record(loc, error=DataError(f"{loc}: expected a JSON object, got {type(value).__name__}"))
                continue
            yield _Record(loc, value)


def _json_list_records(path: Path) -> Iterator[_Record]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for number, value in enumerate(data, start=1):
        yield _Record(Location(str(path), number, "row"), value)


def _parquet_records(path: Path) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            number += 1
            yield _Record(Location(str(path), number, "row"), value)


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
    for number, value in enumerate(dataset, start=1):
        yield _Record(Location(source, number, "row"), value)
