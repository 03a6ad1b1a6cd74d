"""Self-instruct (Wang et al. 2023): the policy proposes new instructions from few-shot "task list" prompts.

Each request shows a shuffled mix of seed instructions and instructions generated so far, numbered, and asks
for the next item ("Come up with a series of tasks:"). Parsed candidates are post-filtered (length, banned
keywords, "Write a program", punctuation/non-ASCII start) and kept only when their ROUGE-L F1 with every
instruction already in the pool (seeds included) is below the threshold (0.7 in the paper).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from alignment.data.rows import messages_id
from alignment.generation.base import GenerationBackend, SamplingSettings, chat_prompt_ids, request_seed
from alignment.generation.rouge import ROUGE_THRESHOLD, RougeLIndex

TASK_LIST_HEADER = "Come up with a series of tasks:\n\n"
# The self-instruct paper's list: things a text-only model cannot do.
BANNED_KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                   "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
PROMPT_FORMATS = ("chat", "raw")
_ITEM_START = re.compile(r"(?:^|\n)\s*\d+\s*\.\s*")
_NUMBERED = re.compile(r"\s*\d+\s*\.")


@dataclass(frozen=True)
class InstructionFilter:
    """Post-filters of generated instructions; :meth:`rejection` names the first one that fails."""

    min_words: int = 4
    max_words: int = 150
    banned_keywords: tuple[str, ...] = BANNED_KEYWORDS

    def rejection(self, text: str) -> str | None:
        """``None`` when ``text`` passes, else the reason: too_short, too_long, keyword, program,
        punctuation_start or non_ascii_start."""
        words = len(text.split())
        if words < self.min_words:
            return "too_short"
        if words > self.max_words:
            return "too_long"
        lowered = text.lower()
        if any(re.search(rf"\b{re.escape(k.lower())}\b", lowered) for k in self.banned_keywords):
            return "keyword"
        if lowered.startswith("write a program"):
            return "program"
        if not text[0].isascii():
            return "non_ascii_start"
        if not text[0].isalnum():
            return "punctuation_start"
        return None


@dataclass(frozen=True)
class SelfInstructSettings:
    """``n_instructions`` to produce; each request shows ``seed_shots`` seed + ``machine_shots`` generated ones
    (seeds fill in while fewer were generated); ``requests_per_round`` requests per generation call."""

    n_instructions: int
    seed_shots: int = 6
    machine_shots: int = 2
    requests_per_round: int = 16
    max_rounds: int = 50
    rouge_threshold: float = ROUGE_THRESHOLD
    prompt_format: str = "chat"
    seed: int = 0


@dataclass
class SelfInstructReport:
    """What happened: rounds, requests, parsed candidates, rejections by reason, ROUGE duplicates, timings."""

    rounds: int = 0
    requests: int = 0
    candidates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    truncated_responses: int = 0
    generation_seconds: float = 0.0
    dedup_seconds: float = 0.0
    lcs_computed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in vars(self).items() if k != "rejected"}, "rejected": dict(self.rejected),
                "generation_seconds": round(self.generation_seconds, 3),
                "dedup_seconds": round(self.dedup_seconds, 3)}


def task_list_prompt(instructions: Sequence[str]) -> str:
    """``"Come up with a series of tasks:\\n\\n1. a\\n2. b\\n3."``: the numbered list, next number open."""
    lines = [f"{i}. {' '.join(text.split())}" for i, text in enumerate(instructions, start=1)]
    return TASK_LIST_HEADER + "\n".join(lines) + f"\n{len(instructions) + 1}."


def parse_instructions(response: str, next_number: int, truncated: bool = False) -> list[str]:
    """Instructions in a response to :func:`task_list_prompt`.

    The response either continues item ``next_number`` directly or restarts the numbering; items split at
    ``"\\n<n>. "``, whitespace collapsed, first letter capitalised. The last item of a truncated response is
    dropped (it may be cut mid-sentence).
    """
    text = response if _NUMBERED.match(response) else f"{next_number}. {response.lstrip()}"
    items = [" ".join(part.split()) for part in _ITEM_START.split(text)]
    items = [item[0].upper() + item[1:] for item in items if item]
    return items[:-1] if truncated and items else items


def encode_request(tokenizer: Any, text: str, prompt_format: str) -> list[int]:
    """Token ids of a request: as one user turn (``chat``) or as raw text after BOS (``raw``, for base LMs)."""
    if prompt_format == "chat":
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": text}])
    if prompt_format != "raw":
        raise ValueError(f"prompt_format={prompt_format!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([int(bos)] if bos is not None else []) + ids


def _shots(rng: random.Random, seeds: Sequence[str], machine: Sequence[str],
           settings: SelfInstructSettings) -> list[str]:
    from_machine = min(settings.machine_shots, len(machine))
    from_seeds = min(settings.seed_shots + settings.machine_shots - from_machine, len(seeds))
    shots = rng.sample(list(seeds), from_seeds) + rng.sample(list(machine), from_machine)
    rng.shuffle(shots)
    return shots


def self_instruct(backend: GenerationBackend, seeds: Sequence[str], settings: SelfInstructSettings,
                  sampling: SamplingSettings, instruction_filter: InstructionFilter | None = None,
                  progress: bool = False) -> tuple[list[str], SelfInstructReport]:
    """Generate up to ``settings.n_instructions`` new instructions with ``backend``; returns them and a report.

    Deterministic for a deterministic backend: shot sampling uses ``random.Random(seed)`` and every request
    gets its own sampling seed. ``progress``: a bar over the accepted instructions (rounds as its postfix).
    """
    if not seeds:
        raise ValueError("self-instruct needs at least one seed instruction")
    instruction_filter = instruction_filter or InstructionFilter()
    rng = random.Random(f"self-instruct:{settings.seed}")
    pool = RougeLIndex(settings.rouge_threshold)
    pool.add_all(seeds)
    machine: list[str] = []
    report = SelfInstructReport()
    with tqdm(total=settings.n_instructions, desc="self-instruct", unit="instruction", disable=not progress) as bar:
        while len(machine) < settings.n_instructions and report.rounds < settings.max_rounds:
            accepted = len(machine)
            _round(backend, seeds, settings, sampling, instruction_filter, rng, pool, machine, report)
            bar.update(min(len(machine), settings.n_instructions) - min(accepted, settings.n_instructions))
            bar.set_postfix(rounds=report.rounds, candidates=report.candidates)
    report.lcs_computed = pool.lcs_computed
    return machine[: settings.n_instructions], report


def _round(backend: GenerationBackend, seeds: Sequence[str], settings: SelfInstructSettings,
           sampling: SamplingSettings, instruction_filter: InstructionFilter, rng: random.Random,
           pool: RougeLIndex, machine: list[str], report: SelfInstructReport) -> None:
    """One generation call of ``settings.requests_per_round`` task-list requests; accepted ones join ``machine``."""
    shot_lists = [_shots(rng, seeds, machine, settings) for _ in range(settings.requests_per_round)]
    requests = [encode_request(backend.tokenizer, task_list_prompt(s), settings.prompt_format) for s in shot_lists]
    request_seeds = [request_seed(settings.seed, f"{report.rounds}:{i}") for i in range(len(requests))]
    started = time.perf_counter()
    completions = backend.generate(requests, sampling, request_seeds)
    report.generation_seconds += time.perf_counter() - started
    started = time.perf_counter()
    for shots, completion in zip(shot_lists, completions, strict=True):
        for text, reason in zip(completion.texts, completion.finish_reasons, strict=True):
            _collect(parse_instructions(text, len(shots) + 1, truncated=reason == "length"),
                     reason == "length", pool, machine, instruction_filter, report)
    report.dedup_seconds += time.perf_counter() - started
    report.rounds += 1
    report.requests += len(requests)


def _collect(candidates: list[str], truncated: bool, pool: RougeLIndex, machine: list[str],
             instruction_filter: InstructionFilter, report: SelfInstructReport) -> None:
    report.truncated_responses += int(truncated)
    for candidate in candidates:
        report.candidates += 1
        reason = instruction_filter.rejection(candidate)
        if reason is not None:
            report.rejected[reason] += 1
        elif pool.add_if_novel(candidate):
            machine.append(candidate)
        else:
            report.duplicates += 1


def instruction_row(prompt: str, provenance: str, round_index: int, **extra: Any) -> dict[str, Any]:
    """A ``prompts.jsonl`` row: ``{id, prompt, messages, provenance, round, ...extra}``; ``id`` is the
    :func:`alignment.data.rows.messages_id` of the one-turn conversation (what the data layer computes)."""
    messages = [{"role": "user", "content": prompt}]
    return {"id": messages_id(messages), "prompt": prompt, "messages": messages, **extra,
            "provenance": provenance, "round": round_index}
