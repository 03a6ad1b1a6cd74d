"""MMLU-style multiple choice: the predicted option is the one whose answer continuation is likeliest.

The prompt follows the original MMLU format (a subject header, ``k`` dev-set examples with their answers, the
question with lettered options and ``Answer:``); each option's score is the log-likelihood of the continuation
`` A`` / `` B`` / ... given the prompt, so no generation (and no sampling) is involved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate
from alignment.logprobs import IGNORE_INDEX, sequence_logprobs

LETTERS = "ABCDEFGHIJ"
Encode = Callable[[str], list[int]]


def check_mmlu_row(row: Any, where: str) -> dict[str, Any]:
    """``row`` if it has ``question`` (str), ``choices`` (2..10 str) and ``answer`` (int index), else a clear error."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    if not isinstance(row.get("question"), str):
        raise ValueError(f"{where}: field 'question' must be a string")
    choices = row.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or \
            not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: field 'choices' must be a list of 2..{len(LETTERS)} strings")
    answer = row.get("answer")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"{where}: field 'answer' must be an index into 'choices' (got {answer!r})")
    return row


def format_question(row: dict[str, Any], with_answer: bool) -> str:
    """One question block: question, lettered options and ``Answer:`` (followed by the letter for shots)."""
    lines = [row["question"].strip()]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(row["choices"])]
    answer = f"Answer: {LETTERS[row['answer']]}\n\n" if with_answer else "Answer:"
    return "\n".join(lines) + "\n" + answer


def mmlu_prompt(row: dict[str, Any], shots: Sequence[dict[str, Any]]) -> str:
    """The full prompt for ``row`` with ``shots`` (dev rows of the same subject) as answered examples."""
    subject = str(row.get("subject", "")).replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""
    return header + "".join(format_question(shot, True) for shot in shots) + format_question(row, False)


@torch.no_grad()
def continuation_logprobs(model: Any, context_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
    """Sum of log p(continuation tokens | context) for each continuation, in one right-padded batch.

    ``model(input_ids [B,T], attention_mask [B,T]).logits`` is ``[B,T,V]``; a continuation must be non-empty.
    """
    if any(not ids for ids in continuations):
        raise ValueError("every continuation needs at least one token")
    rows = [list(context_ids) + list(ids) for ids in continuations]
    width = max(len(row) for row in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # scored: the continuation only
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
        labels[index, len(context_ids): len(row)] = torch.tensor(list(continuations[index]))
    from alignment.evaluation.heldout import model_device

    device = model_device(model)
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # [N, T, V]
    return sequence_logprobs(logits, labels.to(device)).sum.tolist()


def predict_option(model: Any, encode: Encode, prompt: str, n_options: int, bos_id: int | None = None,
                   max_context: int | None = None) -> int:
    """Index of the likeliest option letter after ``prompt`` (``encode`` adds no special tokens); a context
    longer than ``max_context`` tokens keeps its end (the question itself), as few-shot examples come first."""
    body = encode(prompt)
    if max_context is not None:
        body = body[-(max_context - (bos_id is not None)):]
    context = ([bos_id] if bos_id is not None else []) + body
    letters = [encode(f" {LETTERS[i]}") for i in range(n_options)]
    scores = continuation_logprobs(model, context, letters)
    return max(range(n_options), key=lambda i: scores[i])


def mmlu_accuracy(model: Any, encode: Encode, rows: Sequence[dict[str, Any]], dev_rows: Sequence[dict[str, Any]],
                  shots: int, bos_id: int | None = None, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0, max_context: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy (with bootstrap CI) overall and per subject with ``shots`` dev examples of the row's subject;
    ``progress``: a bar over the questions."""
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for dev in dev_rows:
        by_subject[str(dev.get("subject", ""))].append(dev)
    correct: list[float] = []
    per_subject: dict[str, list[float]] = defaultdict(list)
    for row in tqdm(rows, desc=f"MMLU {shots}-shot", unit="question", disable=not progress):
        subject = str(row.get("subject", ""))
        examples = by_subject.get(subject, [])[:shots]
        if len(examples) < shots:
            raise ValueError(f"subject {subject!r} has {len(examples)} dev examples; {shots}-shot needs {shots}")
        hit = float(predict_option(model, encode, mmlu_prompt(row, examples), len(row["choices"]), bos_id,
                                   max_context)
                    == row["answer"])
        correct.append(hit)
        per_subject[subject].append(hit)
    if not correct:
        raise ValueError("no MMLU rows to score")
    return {"accuracy": estimate(correct, resamples, seed).to_dict(), "shots": shots,
            "per_subject": {name: sum(v) / len(v) for name, v in sorted(per_subject.items())}}
