"""MT-bench: multi-turn answers in FastChat's ``model_answer`` format.

Every question's turns are answered in order, each turn conditioned on the model's own earlier answers; all
questions' turn ``t`` go to the backend together. Rows: ``{question_id, answer_id, model_id, choices: [{index,
turns}], tstamp}``. Optional judging scores every turn's answer with a pointwise judge (its 1-5 scale).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from alignment.evaluation.stats import DEFAULT_RESAMPLES, estimate
from alignment.generation.base import GenerationBackend, SamplingSettings, chat_prompt_ids, request_seed
from alignment.hashing import content_hash
from alignment.ranking.base import CandidateGroup


def check_question(row: Any, where: str) -> dict[str, Any]:
    """``row`` if it has ``question_id`` and a non-empty list of string ``turns``, else a clear error."""
    if not isinstance(row, dict) or "question_id" not in row:
        raise ValueError(f"{where}: field 'question_id' is missing")
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
        raise ValueError(f"{where}: field 'turns' must be a non-empty list of non-empty strings")
    return row


def mt_bench_answers(backend: GenerationBackend, tokenizer: Any, questions: Sequence[dict[str, Any]],
                     settings: SamplingSettings, model_id: str) -> list[dict[str, Any]]:
    """FastChat answer rows for ``questions`` (one choice; seeds derived from ``settings.seed``, id and turn)."""
    histories: list[list[dict[str, str]]] = [[] for _ in questions]
    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(max(len(q["turns"]) for q in questions) if questions else 0):
        active = [i for i, q in enumerate(questions) if turn < len(q["turns"])]
        for i in active:
            histories[i].append({"role": "user", "content": questions[i]["turns"][turn]})
        prompts = [chat_prompt_ids(tokenizer, histories[i]) for i in active]
        seeds = [request_seed(settings.seed, f"{questions[i]['question_id']}:{turn}") for i in active]
        completions = backend.generate(prompts, settings, seeds)
        for i, completion in zip(active, completions, strict=True):
            text = completion.texts[0]
            histories[i].append({"role": "assistant", "content": text})
            answers[i].append(text)
    return [{"question_id": q["question_id"],
             "answer_id": content_hash({"question_id": q["question_id"], "model_id": model_id, "turns": turns}),
             "model_id": model_id, "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}
            for q, turns in zip(questions, answers, strict=True)]


def turn_lengths(answers: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean answer length in characters per turn (``turn_1``, ``turn_2``, ...)."""
    per_turn: dict[int, list[int]] = {}
    for row in answers:
        for index, text in enumerate(row["choices"][0]["turns"]):
            per_turn.setdefault(index, []).append(len(text))
    return {f"turn_{i + 1}_mean_chars": sum(v) / len(v) for i, v in sorted(per_turn.items())}


def turn_prompt(turns: Sequence[str], answers: Sequence[str], turn: int) -> str:
    """What the judge sees as the question of ``turn``: earlier turns and answers, then the turn itself."""
    earlier = "".join(f"User: {turns[i]}\nAssistant: {answers[i]}\n\n" for i in range(turn))
    return (f"(Earlier in this conversation)\n{earlier}(Now the user asks)\n{turns[turn]}" if earlier
            else turns[turn])


def judge_groups(questions: Sequence[dict[str, Any]], answers: Sequence[dict[str, Any]]) -> list[CandidateGroup]:
    """One single-response group per (question, turn) for a pointwise judge, in question then turn order."""
    groups = []
    for question, answer in zip(questions, answers, strict=True):
        turns, replies = question["turns"], answer["choices"][0]["turns"]
        for turn, reply in enumerate(replies):
            prompt = turn_prompt(turns, replies, turn)
            groups.append(CandidateGroup(key=f"{question['question_id']}:{turn}", prompt=prompt,
                                         messages=({"role": "user", "content": prompt},), responses=(reply,)))
    return groups


def judged_summary(groups: Sequence[CandidateGroup], scores: Sequence[float | None], resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> dict[str, Any]:
    """Mean judge score overall (bootstrap CI) and per turn; unscorable answers are counted, not averaged."""
    per_turn: dict[str, list[float]] = {}
    every: list[float] = []
    for group, score in zip(groups, scores, strict=True):
        if score is not None:
            per_turn.setdefault(f"turn_{int(group.key.rsplit(':', 1)[1]) + 1}", []).append(score)
            every.append(score)
    summary: dict[str, Any] = {"unscorable": sum(1 for s in scores if s is None),
                               "per_turn": {k: sum(v) / len(v) for k, v in sorted(per_turn.items())}}
    if every:
        summary["score"] = estimate(every, resamples, seed).to_dict()
    return summary
