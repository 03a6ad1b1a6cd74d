"""Task families of the embedded world: prompt generators, parsers, solvers and plausible wrong answers.

Every prompt names its family by its fixed wording, so :func:`solve` can re-derive the answer from the prompt
text alone. Lists hold 2-5 items from small closed vocabularies so that a ~3M-parameter model can learn them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

WORDS = ("apple", "bird", "cat", "cup", "dog", "fish", "hat", "moon", "rain", "star", "sun", "tree")
MIN_ITEMS, MAX_ITEMS = 2, 5
# Arithmetic is a two-digit number plus or minus a one-digit number: full two-digit by two-digit addition
# (carry across two digit pairs) is not learnable by a ~2M-parameter model in a few hundred steps.
MIN_LEFT, MAX_LEFT = 10, 99
MIN_RIGHT, MAX_RIGHT = 1, 9
MAX_DIGIT = 9  # sort works on single digits

FAMILIES = ("arithmetic", "uppercase", "count", "reverse", "sort")
SFT_FAMILIES = ("arithmetic", "uppercase", "count")
PREFERENCE_FAMILIES = ("reverse", "sort")

_WORD_LIST = r"([a-z]+(?: [a-z]+)*)"
_DIGIT_LIST = r"(\d+(?: \d+)*)"


@dataclass(frozen=True)
class TaskFamily:
    """How one family makes, reads and answers prompts.

    ``sample`` draws a prompt; ``solve`` maps the prompt's regex match to the correct answer; ``wrongs`` maps the
    match and the correct answer to candidate wrong answers (at least one differs from the correct answer).
    """

    name: str
    pattern: re.Pattern[str]
    sample: Callable[[random.Random], str]
    solve: Callable[[re.Match[str]], str]
    wrongs: Callable[[re.Match[str], str], list[str]]


def _sample_words(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(MIN_ITEMS, MAX_ITEMS))]


def _replace_one_word(words: list[str]) -> list[str]:
    """Swap the last word for its alphabetical neighbour in the vocabulary (always a different word)."""
    last = words[-1].lower()
    neighbour = WORDS[(WORDS.index(last) + 1) % len(WORDS)] if last in WORDS else "cat" if last != "cat" else "dog"
    replacement = neighbour.upper() if words[-1].isupper() else neighbour
    return [*words[:-1], replacement]


def _swap_adjacent(items: list[str]) -> list[str]:
    """Swap the first adjacent pair of distinct items (returns the input order if all items are equal)."""
    for i in range(len(items) - 1):
        if items[i] != items[i + 1]:
            return [*items[:i], items[i + 1], items[i], *items[i + 2 :]]
    return list(items)


# --- arithmetic: "What is 23 + 5?" -> "28" ------------------------------------------------------------------


def _sample_arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(MIN_LEFT, MAX_LEFT), rng.randint(MIN_RIGHT, MAX_RIGHT)
    # The left operand is at least 10 and the right at most 9, so differences stay positive.
    return f"What is {a} {rng.choice('+-')} {b}?"


def _solve_arithmetic(match: re.Match[str]) -> str:
    a, op, b = int(match[1]), match[2], int(match[3])
    return str(a + b if op == "+" else a - b)


def _wrong_arithmetic(match: re.Match[str], correct: str) -> list[str]:
    a, op, b = int(match[1]), match[2], int(match[3])
    value = int(correct)
    other_op = a - b if op == "+" else a + b
    return [str(v) for v in (value + 1, value - 1, value + 10, value - 10, other_op) if v >= 0]


# --- uppercase: "Uppercase the words: cat dog" -> "CAT DOG" -------------------------------------------------


def _sample_uppercase(rng: random.Random) -> str:
    return "Uppercase the words: " + " ".join(_sample_words(rng))


def _solve_uppercase(match: re.Match[str]) -> str:
    return match[1].upper()


def _wrong_uppercase(match: re.Match[str], correct: str) -> list[str]:
    words = match[1].split()
    upper = correct.split()
    last_left_lower = [*upper[:-1], words[-1]]
    capitalised = [w.capitalize() for w in words]
    return [" ".join(c) for c in (last_left_lower, capitalised, upper[::-1], _replace_one_word(upper))]


# --- count: "Count the word cat in: cat dog cat" -> "2" -----------------------------------------------------


def _sample_count(rng: random.Random) -> str:
    words = _sample_words(rng)
    # Half the time the target is taken from the list so that non-zero counts are common.
    target = rng.choice(words) if rng.random() < 0.5 else rng.choice(WORDS)
    return f"Count the word {target} in: " + " ".join(words)


def _solve_count(match: re.Match[str]) -> str:
    return str(match[2].split().count(match[1]))


def _wrong_count(match: re.Match[str], correct: str) -> list[str]:
    value = int(correct)
    total = len(match[2].split())
    return [str(v) for v in (value + 1, value - 1, total) if v >= 0]


# --- reverse: "Reverse the words: cat dog sun" -> "sun dog cat" ---------------------------------------------


def _sample_reverse(rng: random.Random) -> str:
    return "Reverse the words: " + " ".join(_sample_words(rng))


def _solve_reverse(match: re.Match[str]) -> str:
    return " ".join(match[1].split()[::-1])


def _wrong_reverse(match: re.Match[str], correct: str) -> list[str]:
    reversed_words = correct.split()
    return [match[1], " ".join(_swap_adjacent(reversed_words)), " ".join(_replace_one_word(reversed_words))]


# --- sort: "Sort ascending: 5 2 9" -> "2 5 9" ---------------------------------------------------------------


def _sample_sort(rng: random.Random) -> str:
    digits = [str(rng.randint(0, MAX_DIGIT)) for _ in range(rng.randint(MIN_ITEMS, MAX_ITEMS))]
    return "Sort ascending: " + " ".join(digits)


def _solve_sort(match: re.Match[str]) -> str:
    return " ".join(str(v) for v in sorted(int(x) for x in match[1].split()))


def _wrong_sort(match: re.Match[str], correct: str) -> list[str]:
    ordered = correct.split()
    bumped = [*ordered[:-1], str(int(ordered[-1]) - 1 if int(ordered[-1]) > 0 else 1)]
    return [" ".join(ordered[::-1]), match[1], " ".join(_swap_adjacent(ordered)), " ".join(bumped)]


TASK_FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily("arithmetic", re.compile(r"What is (\d+) ([+-]) (\d+)\?"), _sample_arithmetic,
                   _solve_arithmetic, _wrong_arithmetic),
        TaskFamily("uppercase", re.compile(r"Uppercase the words: " + _WORD_LIST), _sample_uppercase,
                   _solve_uppercase, _wrong_uppercase),
        TaskFamily("count", re.compile(r"Count the word ([a-z]+) in: " + _WORD_LIST), _sample_count,
                   _solve_count, _wrong_count),
        TaskFamily("reverse", re.compile(r"Reverse the words: " + _WORD_LIST), _sample_reverse,
                   _solve_reverse, _wrong_reverse),
        TaskFamily("sort", re.compile(r"Sort ascending: " + _DIGIT_LIST), _sample_sort, _solve_sort, _wrong_sort),
    )
}
assert tuple(TASK_FAMILIES) == FAMILIES
assert not set(SFT_FAMILIES) & set(PREFERENCE_FAMILIES)


def parse_prompt(prompt: str) -> tuple[TaskFamily, re.Match[str]]:
    """Find the family whose wording matches ``prompt`` exactly; raise ``ValueError`` if none does."""
    text = prompt.strip()
    for family in TASK_FAMILIES.values():
        match = family.pattern.fullmatch(text)
        if match is not None:
            return family, match
    raise ValueError(f"prompt is not from the embedded task world (no family matches): {prompt[:120]!r}")


def family_of(prompt: str) -> str:
    """Name of the family that produced ``prompt``; ``ValueError`` for a foreign prompt."""
    return parse_prompt(prompt)[0].name


def solve(prompt: str) -> str:
    """The correct answer to a world prompt, re-derived from the prompt text."""
    family, match = parse_prompt(prompt)
    return family.solve(match)


def sample_prompt(family: str, rng: random.Random) -> str:
    """Draw one prompt of ``family`` using ``rng``."""
    if family not in TASK_FAMILIES:
        raise ValueError(f"unknown task family {family!r}; expected one of {FAMILIES}")
    return TASK_FAMILIES[family].sample(rng)


def wrong_answer(prompt: str, rng: random.Random) -> str:
    """A plausible-but-wrong answer to ``prompt`` (off-by-one, one word swapped, wrong order, ...).

    Always differs from the correct answer; which kind of mistake is drawn with ``rng``.
    """
    family, match = parse_prompt(prompt)
    correct = family.solve(match)
    options = sorted({w for w in family.wrongs(match, correct) if w != correct})
    if not options:  # every family lists a mistake that always differs; this guards future edits
        raise AssertionError(f"no wrong answer available for prompt {prompt!r}")
    return rng.choice(options)


def normalise_response(response: str, eos_text: str = "</s>") -> str:
    """Strip a response for comparison: cut at the first EOS text, collapse whitespace."""
    return " ".join(response.split(eos_text, 1)[0].split())


def verify(prompt: str, response: str) -> float:
    """1.0 if ``response`` is the correct answer to the world ``prompt``, else 0.0.

    Leading/trailing whitespace and anything from an ``</s>`` onwards are ignored. Raises ``ValueError`` if
    ``prompt`` is not a prompt of the embedded world.
    """
    return 1.0 if normalise_response(response) == solve(prompt) else 0.0
