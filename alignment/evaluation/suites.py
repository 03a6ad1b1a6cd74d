"""One model at a time through each evaluation suite, from plain values (paths, rows, settings).

Generation goes through the generate stage's backends (``create_backend``) and is cached per model and suite
(:mod:`alignment.evaluation.generation_cache`); scoring models are loaded with :func:`load_hf_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.evaluation.generation_cache import cached_rows, generation_key
from alignment.generation.base import BackendOptions, SamplingSettings, chat_prompt_ids
from alignment.generation.sources import ModelSource


@dataclass(frozen=True)
class Generator:
    """How a model generates: its source, fingerprint, backend name/options and the shared sampling."""

    source: ModelSource
    fingerprint: str
    backend: str
    options: BackendOptions
    settings: SamplingSettings


def _start(generator: Generator) -> Any:
    from alignment.generation.factory import create_backend

    return create_backend(generator.backend, generator.source, generator.options).backend


def _tokenizer(source: ModelSource) -> Any:
    from alignment.models.loading import load_tokenizer

    return load_tokenizer(source.tokenizer)


def single_turn_outputs(generator: Generator, keyed_prompts: Sequence[tuple[str, str]], cache_file: str | Path,
                        max_prompt_tokens: int, progress: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """Responses rows (``generate_rows`` format) to ``(id, instruction)`` prompts; cached. Prompts longer than
    ``max_prompt_tokens`` are cut to their last tokens so every model answers every instruction. ``progress``:
    a bar over the prompts while generating (none when the cache answers)."""
    from tqdm.auto import tqdm

    from alignment.generation.responses import PromptItem, generate_rows

    tokenizer = _tokenizer(generator.source)
    items = []
    for key, text in keyed_prompts:
        messages = ({"role": "user", "content": text},)
        ids = chat_prompt_ids(tokenizer, messages)[-max_prompt_tokens:]
        items.append(PromptItem(id=key, messages=messages, prompt_ids=tuple(ids)))
    key = generation_key(generator.fingerprint, [list(i.prompt_ids) for i in items], generator.settings.to_dict())

    def produce() -> list[dict[str, Any]]:
        with _start(generator) as backend, tqdm(total=len(items), desc="generate", unit="prompt",
                                                disable=not progress) as bar:
            return generate_rows(backend, items, generator.settings, on_done=bar.update)

    return cached_rows(cache_file, key, produce)


def mt_bench_outputs(generator: Generator, questions: Sequence[dict[str, Any]], model_id: str,
                     cache_file: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """FastChat answer rows of ``questions``; cached."""
    from alignment.evaluation.mt_bench import mt_bench_answers

    key = generation_key(generator.fingerprint, list(questions), generator.settings.to_dict(), "mt_bench")

    def produce() -> list[dict[str, Any]]:
        with _start(generator) as backend:
            return mt_bench_answers(backend, _tokenizer(generator.source), questions, generator.settings, model_id)

    return cached_rows(cache_file, key, produce)


def scoring_device(device: str | None) -> str:
    """``device``, or the first GPU when there is one, else the CPU."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def with_scoring_model(source: ModelSource, dtype: str, work: Callable[[Any, Any], Any],
                       device: str | None = None) -> Any:
    """``work(model, tokenizer)`` with ``source`` loaded in eval mode (an adapter merged in) on ``device``."""
    from alignment.generation.sources import load_hf_model

    model = load_hf_model(source, dtype=dtype).to(scoring_device(device))
    return work(model, _tokenizer(source))


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.json`` (list of objects) file; errors name file and line/index."""
    import json

    from alignment.data.readers import read_jsonl

    file = Path(path)
    if file.suffix == ".json":
        rows = json.loads(file.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{file}: expected a JSON list of objects")
        return rows
    return list(read_jsonl(file))


def alpaca_eval_rows(path: str | Path, max_rows: int | None) -> list[dict[str, Any]]:
    """AlpacaEval rows (``instruction``, ``output``, ``generator``), checked field by field. An empty ``output``
    is allowed: a model may answer nothing, and a ``model_outputs.json`` we wrote must read back as references."""
    rows = read_records(path)[:max_rows] if max_rows else read_records(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise ValueError(f"{path} row {number}: field 'instruction' must be a non-empty string")
        if not isinstance(row.get("output"), str):
            raise ValueError(f"{path} row {number}: field 'output' must be a string")
    return rows
