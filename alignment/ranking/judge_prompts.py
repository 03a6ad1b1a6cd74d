"""Prompts of the LLM-as-judge ranker and parsing of its verdicts.

Pointwise: a self-rewarding style additive rubric, one point per criterion met (0..5), ending with a line
``Score: <points>``. Pairwise: the judge names the better of two responses as ``[[A]]`` or ``[[B]]``.
"""

from __future__ import annotations

import re

MAX_POINTS = 5.0
# Lines that open the verdict for a judge that did not write one (see JudgeRanker): the judge only has to
# finish them, and the parsers read "Score: 4" / "[[A]]" as usual. Restating the scale matters for small judges:
# after a bare "Score:" SmolLM2-135M mostly wrote 10 or 100 (9 of 24 samples in 0..5; 14 of 24 with the scale).
SCORE_CUE = "My total, from 0 to 5 points.\nScore:"
VERDICT_CUE = "Verdict: [["
_SCORE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_VERDICT = re.compile(r"\[\[\s*([AB])\s*\]\]")

POINTWISE_TEMPLATE = """Judge the response below to the user's question with this additive 5-point scale.
Add points as the criteria are met:
- 1 point if the response is relevant and gives some information related to the question, even if it is
  incomplete or contains some irrelevant content.
- A 2nd point if it addresses a substantial part of the question but does not fully resolve it.
- A 3rd point if it answers the core of the question usefully, even if it is not written like an expert.
- A 4th point if it is clearly written from an assistant's perspective, directly and comprehensively
  addresses the question, and is well organised, with at most minor room for improvement.
- A 5th point if it is an impeccable, expert, focused answer with no extraneous content.

<question>{prompt}</question>
<response>{response}</response>

Briefly justify your total, then write the final line exactly as "Score: <points>"."""

PAIRWISE_TEMPLATE = """Two assistants answered the user's question below. Decide which answer is more helpful,
correct and clearly written. Ignore the order in which they appear and their length.

<question>{prompt}</question>
<answer_a>{first}</answer_a>
<answer_b>{second}</answer_b>

Briefly explain, then write the verdict exactly as "[[A]]" if answer A is better or "[[B]]" if answer B is."""


def pointwise_prompt(prompt: str, response: str) -> str:
    """The judge's request to score ``response`` to ``prompt``."""
    return POINTWISE_TEMPLATE.format(prompt=prompt, response=response)


def pairwise_prompt(prompt: str, first: str, second: str) -> str:
    """The judge's request to compare ``first`` (A) with ``second`` (B)."""
    return PAIRWISE_TEMPLATE.format(prompt=prompt, first=first, second=second)


def parse_score(text: str) -> float | None:
    """The last ``Score: x`` in ``text`` when ``0 <= x <= 5``, else ``None`` (unparseable)."""
    found = _SCORE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 0.0 <= value <= MAX_POINTS else None


def parse_verdict(text: str) -> str | None:
    """``"A"`` or ``"B"`` from the last ``[[A]]``/``[[B]]`` in ``text``, else ``None``."""
    found = _VERDICT.findall(text)
    return found[-1] if found else None
