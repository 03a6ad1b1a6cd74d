"""``ranker=judge``: an LLM judges candidates through the generation interface (any backend).

Pointwise mode scores each response ``samples`` times with the additive rubric and averages the parseable
scores (a response with none is unscorable: ``None``). Pairwise mode asks for a verdict on every pair in both
orders, ``samples`` times each; ``P(i beats j)`` is the share of parseable votes for ``i`` (0.5 when none).

A sample without a parseable verdict (a small judge rambles, stops early or ignores the format) is continued
once: its own text, then a cue line (:data:`~alignment.ranking.judge_prompts.SCORE_CUE`, which restates the
0-5 scale and ends in ``Score:``, or ``Verdict: [[``) the judge only has to finish, in a few tokens. The judge's reasoning is kept as the context of its verdict; a capable judge that follows the format
never gets a second request. ``cue_unparsed=False`` turns this off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from alignment.generation.base import GenerationBackend, SamplingSettings, chat_prompt_ids, request_seed
from alignment.ranking.base import CandidateGroup, GroupScores, Ranker, scores_from_win_probs
from alignment.ranking.judge_prompts import (
    SCORE_CUE,
    VERDICT_CUE,
    pairwise_prompt,
    parse_score,
    parse_verdict,
    pointwise_prompt,
)
from alignment.ranking.pairwise import ordered_pairs

JUDGE_MODES = ("pointwise", "pairwise")
CUE_MAX_NEW_TOKENS = 4  # " 4.5" or "A]]"


class JudgeRanker(Ranker):
    """LLM-as-judge over ``backend``; ``settings.n`` is the number of samples per judgement."""

    name = "judge"

    def __init__(self, backend: GenerationBackend, settings: SamplingSettings, mode: str = "pointwise",
                 max_prompt_tokens: int = 896, cue_unparsed: bool = True):
        super().__init__()
        if mode not in JUDGE_MODES:
            raise ValueError(f"judge mode {mode!r}; expected one of {', '.join(JUDGE_MODES)}")
        self.backend, self.settings, self.mode, self.max_prompt_tokens = backend, settings, mode, max_prompt_tokens
        self.cue_unparsed = cue_unparsed
        self._parse: Callable[[str], object] = parse_score if mode == "pointwise" else parse_verdict
        self._cue = SCORE_CUE if mode == "pointwise" else VERDICT_CUE

    def describe(self) -> dict[str, Any]:
        return {"ranker": self.name, "mode": self.mode, "backend": self.backend.describe(),
                "sampling": self.settings.to_dict(), "max_prompt_tokens": self.max_prompt_tokens}

    def close(self) -> None:
        self.backend.close()

    def _ask(self, requests: Sequence[tuple[str, str]]) -> list[list[str] | None]:
        """Sampled judge outputs for ``(seed key, request text)``; ``None`` where the request is too long."""
        encoded = [chat_prompt_ids(self.backend.tokenizer, [{"role": "user", "content": text}])
                   for _, text in requests]
        fits = [index for index, ids in enumerate(encoded) if len(ids) <= self.max_prompt_tokens]
        self.counts["judge_prompts_too_long"] += len(encoded) - len(fits)
        seeds = [request_seed(self.settings.seed, requests[index][0]) for index in fits]
        completions = self.backend.generate([encoded[index] for index in fits], self.settings, seeds)
        out: list[list[str] | None] = [None] * len(requests)
        for index, completion in zip(fits, completions, strict=True):
            out[index] = list(completion.texts)
        self.counts["judge_requests"] += len(fits)
        if self.cue_unparsed:
            self._finish_unparsed(requests, encoded, out)
        return out

    def _finish_unparsed(self, requests: Sequence[tuple[str, str]], encoded: list[list[int]],
                         out: list[list[str] | None]) -> None:
        """Replace every unparseable sample by itself + the cue line + the judge's few-token continuation
        (skipped when that would be longer than the first request's prompt and sampling budget)."""
        pending = sorted({(index, text) for index, texts in enumerate(out) for text in texts or []
                          if self._parse(text) is None})  # equal samples (greedy judges) are continued once
        tokenizer, budget = self.backend.tokenizer, self.max_prompt_tokens + self.settings.max_new_tokens
        keys, prefixes, prompts = [], [], []
        for index, text in pending:
            prefix = f"{text.rstrip()}\n{self._cue}" if text.strip() else self._cue
            ids = encoded[index] + list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            if len(ids) + CUE_MAX_NEW_TOKENS <= budget:
                keys.append((index, text))
                prefixes.append(prefix)
                prompts.append(ids)
        if not keys:
            return
        seeds = [request_seed(self.settings.seed, f"{requests[index][0]}:cue:{text}") for index, text in keys]
        settings = replace(self.settings, n=1, max_new_tokens=CUE_MAX_NEW_TOKENS)
        completions = self.backend.generate(prompts, settings, seeds)
        finished = {key: prefix + completion.texts[0]
                    for key, prefix, completion in zip(keys, prefixes, completions, strict=True)}
        self.counts["judge_cue_requests"] += len(keys)
        for index, texts in enumerate(out):
            if texts is not None:
                self.counts["judge_cued_samples"] += sum(1 for text in texts if (index, text) in finished)
                out[index] = [finished.get((index, text), text) for text in texts]

    def score_groups(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        if self.mode == "pointwise":
            return self._pointwise(groups)
        return self._pairwise(groups)

    def _pointwise(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        requests = [(f"{g.key}:{i}", pointwise_prompt(g.prompt, r)) for g in groups for i, r in enumerate(g.responses)]
        answers = iter(self._ask(requests))
        out = []
        for group in groups:
            scores: list[float | None] = []
            for _ in group.responses:
                texts = next(answers) or []
                parsed = [s for s in (parse_score(t) for t in texts) if s is not None]
                self.counts["judge_samples"] += len(texts)
                self.counts["judge_unparseable_samples"] += len(texts) - len(parsed)
                self.counts["judge_unscorable_responses"] += int(not parsed)
                scores.append(sum(parsed) / len(parsed) if parsed else None)
            out.append(GroupScores(scores=scores))
        return out

    def _pairwise(self, groups: Sequence[CandidateGroup]) -> list[GroupScores]:
        pairs = [(g, i, j) for g, group in enumerate(groups) for i, j in ordered_pairs(len(group.responses),
                                                                                      group.key, self.settings.seed)]
        requests = [(f"{groups[g].key}:{i}>{j}",
                     pairwise_prompt(groups[g].prompt, groups[g].responses[i], groups[g].responses[j]))
                    for g, i, j in pairs]
        votes: list[dict[tuple[int, int], list[int]]] = [{} for _ in groups]  # (i, j), i < j -> [i wins, j wins]
        for (g, i, j), texts in zip(pairs, self._ask(requests), strict=True):
            tally = votes[g].setdefault((min(i, j), max(i, j)), [0, 0])
            for text in texts or []:
                verdict = parse_verdict(text)
                self.counts["judge_samples"] += 1
                if verdict is None:
                    self.counts["judge_unparseable_samples"] += 1
                    continue
                winner = i if verdict == "A" else j
                tally[0 if winner == min(i, j) else 1] += 1
        return [self._group_from_votes(len(group.responses), votes[g]) for g, group in enumerate(groups)]

    def _group_from_votes(self, n: int, votes: dict[tuple[int, int], list[int]]) -> GroupScores:
        probs = [[0.5] * n for _ in range(n)]
        for (i, j), (wins_i, wins_j) in votes.items():
            total = wins_i + wins_j
            self.counts["judge_undecided_pairs"] += int(total == 0)
            probs[i][j] = wins_i / total if total else 0.5
            probs[j][i] = 1.0 - probs[i][j]
        return GroupScores(scores=scores_from_win_probs(probs), win_probs=probs)


def judge_settings(samples: int, temperature: float, max_new_tokens: int, seed: int) -> SamplingSettings:
    """Sampling settings of the judge: ``samples`` outputs per request."""
    return replace(SamplingSettings(), n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
