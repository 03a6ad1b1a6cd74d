"""Reading and tokenizing a run's datasets as its config names them (shared by every stage)."""

from __future__ import annotations

from typing import Any

from alignment.data.readers import ReadResult, read_rows
from alignment.data.tokenize import tokenize_dataset
from stages.builders.paths import dataset_path
from stages.config.run_config import RunConfig
from stages.config.sections import DatasetSpec


def load_rows(run: RunConfig, spec: DatasetSpec, kind: str) -> ReadResult:
    """Rows of ``kind`` from ``spec``: bad rows raise, or are skipped and counted with ``data.on_bad_row=skip``;
    pairs whose two responses are the same are dropped and counted; duplicate rows are counted (and dropped with
    ``data.duplicates=drop``)."""
    result = read_rows(dataset_path(run, spec), kind=kind, split=spec.split, on_bad_row=run.data.on_bad_row,
                       max_rows=spec.max_rows, duplicates=run.data.duplicates)
    if result.skipped:
        print(f"[data] {result.source}: skipped {result.skipped} bad row(s), e.g. {result.skip_reasons[:3]}")
    if result.degenerate_pairs:
        print(f"[data] {result.source}: dropped {result.degenerate_pairs} pair(s) whose chosen and rejected "
              f"responses are the same")
    if result.duplicate_rows:
        action = "dropped" if run.data.duplicates == "drop" else "kept (data.duplicates=drop drops them)"
        print(f"[data] {result.source}: {result.duplicate_rows} duplicate row(s) {action}")
    return result


def load_tokenized(run: RunConfig, spec: DatasetSpec, kind: str, tokenizer: Any) -> tuple[list[Any], dict[str, Any]]:
    """Tokenized examples of ``spec`` and data statistics for the manifest (rows read, skipped, dropped...)."""
    result = load_rows(run, spec, kind)
    examples, stats = tokenize_dataset(tokenizer, result.rows, max_length=run.data.max_length,
                                       truncation=run.data.truncation)
    if stats.dropped_empty_after_truncation:
        print(f"[data] {result.source}: dropped {stats.dropped_empty_after_truncation} row(s) whose response would "
              f"be empty after truncation to {run.data.max_length} tokens")
    return examples, {**result.counts(), **stats.to_dict()}


def heldout_examples(run: RunConfig, tokenizer: Any, which: str) -> list[Any]:
    """Tokenized rows of ``data.sft_eval`` (``which="sft"``) or ``data.preference_eval`` (``"preference"``)."""
    spec = run.data.sft_eval if which == "sft" else run.data.preference_eval
    return load_tokenized(run, spec, which, tokenizer)[0]


def heldout_batches(examples: list[Any], tokenizer: Any, which: str, batch_size: int) -> list[Any]:
    """``examples`` of :func:`heldout_examples` in file order, ``batch_size`` per batch (preference batches carry
    their pair ids, which a reference log-prob store needs)."""
    from functools import partial

    from alignment.data.collate import collate_preference, collate_sft
    from alignment.train.batches import WithIds

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = partial(collate_sft, pad_id=pad) if which == "sft" else WithIds(partial(collate_preference, pad_id=pad))
    return [collate(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
