"""The four rankers on tiny random checkpoints (PairRM format, reward model), the verifier and a scripted judge."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from alignment.generation.base import Completion, GenerationBackend, ProgressFn, SamplingSettings
from alignment.ranking.base import CandidateGroup
from alignment.ranking.judge import JudgeRanker
from alignment.ranking.judge_prompts import SCORE_CUE, VERDICT_CUE
from alignment.ranking.pairrm import PairRMRanker
from alignment.ranking.pairrm_model import encode_pairs, load_pairrm
from alignment.ranking.reward_model import RewardModelRanker
from alignment.ranking.tiny import build_pairrm_checkpoint, build_reward_checkpoint
from alignment.world.ranker import VerifierRanker
from alignment.world.tasks import sample_prompt, solve, wrong_answer
from alignment.world.tokenizer import train_tokenizer


def group(prompt: str, *responses: str, key: str = "g") -> CandidateGroup:
    return CandidateGroup(key=key, prompt=prompt, messages=({"role": "user", "content": prompt},),
                          responses=tuple(responses))


@pytest.fixture(scope="module")
def pairrm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = build_pairrm_checkpoint(tmp_path_factory.mktemp("pairrm"), seed=1)
    model, _ = load_pairrm(str(path))
    with torch.no_grad():  # larger random weights so that the candidates' contents visibly change the logits
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "LayerNorm" not in name:
                parameter.normal_(0.0, 0.3)
    from alignment.ranking.pairrm_model import save_pairrm

    save_pairrm(model, load_pairrm(str(path))[1], path)
    return path


def test_pairrm_input_has_the_three_prefixed_parts_and_counts_truncation(pairrm_dir: Path) -> None:
    _, tokenizer = load_pairrm(str(pairrm_dir))
    encoded = encode_pairs(tokenizer, ["hi"], ["a"], ["b"])
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids[0].tolist())
    assert tokens[:2] == ["[CLS]", "<|source|>"] and tokens.count("[CLS]") == 3 and tokens.count("[SEP]") == 3
    assert tokens.index("<|candidate1|>") < tokens.index("<|candidate2|>")
    long = encode_pairs(tokenizer, ["w " * 50], ["x " * 100], ["z"], source_max=20, candidate_max=10)
    assert (long.truncated_sources, long.truncated_candidates) == (1, 1)
    assert int(long.attention_mask.sum()) <= 20 + 2 * 10  # the total budget holds


def test_pairrm_win_probabilities_are_consistent_and_order_free(pairrm_dir: Path) -> None:
    ranker = PairRMRanker(str(pairrm_dir), batch_size=4)
    candidates = ("seven", "The answer is 8.", "hello world", "7")
    first = ranker.score_groups([group("What is 3 + 4?", *candidates)])[0]
    probs = first.win_probs
    assert probs is not None
    for i in range(4):
        assert first.scores[i] == pytest.approx(sum(probs[i][j] for j in range(4) if j != i) / 3)
        for j in range(4):
            assert probs[i][j] + probs[j][i] == pytest.approx(1.0)
    numeric = [s for s in first.scores if s is not None]
    assert max(numeric) - min(numeric) > 1e-3  # the model's opinions are visible
    # presenting the candidates in another order gives the same scores (both orders are always compared)
    reordered = ranker.score_groups([group("What is 3 + 4?", *reversed(candidates), key="other")])[0]
    assert list(reversed(reordered.scores)) == pytest.approx(first.scores, abs=1e-5)
    # one logit equals the model applied to the encoded pair directly
    logit = ranker.compare(["What is 3 + 4?"], ["seven"], ["7"])[0]
    encoded = encode_pairs(ranker.tokenizer, ["What is 3 + 4?"], ["seven"], ["7"])
    with torch.no_grad():
        direct = float(ranker.model(encoded.input_ids, encoded.attention_mask)[0])
    assert logit == pytest.approx(direct, abs=1e-5)
    assert ranker.counters()["comparisons"] == 12 + 12 + 1


def test_pairrm_refuses_a_directory_without_safetensors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pairrm(str(tmp_path))


def test_reward_model_scores_with_the_chat_template_in_any_batch_size(tmp_path: Path) -> None:
    path = build_reward_checkpoint(tmp_path / "rm", seed=2)
    groups = [group("What is 3 + 4?", "7", "8", "seven"), group("Say hi", "hi", key="h")]
    one = RewardModelRanker(str(path), batch_size=1)
    three = RewardModelRanker(str(path), batch_size=3)
    scores_one = [s for g in one.score_groups(groups) for s in g.scores]
    scores_three = [s for g in three.score_groups(groups) for s in g.scores]
    assert scores_one == pytest.approx(scores_three, abs=1e-5) and len(set(scores_one)) > 1
    ids = one.encode(groups[0].messages, "What is 3 + 4?", "7")
    text = str(one.tokenizer.decode(ids))
    assert "<|user|>" in text and "<|assistant|>" in text and text.rstrip().endswith("</s>")
    short = RewardModelRanker(str(path), max_tokens=4)
    short.score_groups([groups[1]])
    assert short.counters()["truncated_inputs"] == 1


def test_verifier_scores_world_answers_exactly() -> None:
    rng = random.Random(0)
    prompt = sample_prompt(sorted(_families())[0], rng)
    right, wrong = solve(prompt), wrong_answer(prompt, rng)
    scored = VerifierRanker().score_groups([group(prompt, wrong, f" {right} </s>", "")])[0]
    assert scored.scores == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="embedded-world prompts"):
        VerifierRanker().score_groups([group("Write a poem.", "ok")])


def _families() -> list[str]:
    from alignment.world.tasks import TASK_FAMILIES

    return list(TASK_FAMILIES)


class ScriptedJudge(GenerationBackend):
    """Answers every request with fixed outputs chosen by a function of the request text."""

    name = "scripted"

    def __init__(self, answer):  # noqa: ANN001
        self.tokenizer = train_tokenizer(["judge the response score"] * 4, vocab_size=300)
        self.answer, self.requests = answer, 0

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings,
                 seeds: Sequence[int] | None = None, on_done: ProgressFn | None = None) -> list[Completion]:
        self.requests += len(prompts)
        outs = []
        for ids in prompts:
            texts = self.answer(self.tokenizer.decode(ids), settings.n)
            outs.append(Completion(texts=texts, finish_reasons=["stop"] * settings.n, n_tokens=[1] * settings.n))
        return outs


def test_pointwise_judge_averages_parseable_samples_and_counts_junk() -> None:
    def answer(request: str, n: int) -> list[str]:
        if "<response>good</response>" in request:
            return ["Score: 5", "Score: 4", "bla"][:n]
        if "<response>bad</response>" in request:
            return ["Score: 1", "Score: 2", "Score: 3"][:n]
        return ["no idea"] * n

    judge = JudgeRanker(ScriptedJudge(answer), SamplingSettings(n=3, temperature=0.7), cue_unparsed=False)
    scored = judge.score_groups([group("Q?", "good", "bad", "junk")])[0]
    assert scored.scores == [4.5, 2.0, None]
    counts = judge.counters()
    assert (counts["judge_samples"], counts["judge_unparseable_samples"]) == (9, 4)
    assert counts["judge_unscorable_responses"] == 1


def test_an_unparseable_sample_is_finished_after_the_cue_line() -> None:
    cued: list[str] = []

    def answer(request: str, n: int) -> list[str]:
        if request.endswith(SCORE_CUE):  # a continuation: the judge's own text, then the opened score line
            cued.append(request)
            return [" 4" if "<response>good</response>" in request else " 9"]
        if "<response>bad</response>" in request:
            return ["Score: 2"] * n
        return ["It is fine." if "<response>good</response>" in request else ""] * n

    backend = ScriptedJudge(answer)
    judge = JudgeRanker(backend, SamplingSettings(n=2, temperature=0.7))
    scored = judge.score_groups([group("Q?", "good", "bad", "junk")])[0]
    assert scored.scores == [4.0, 2.0, None]  # 9 is outside the rubric's 0..5: still unscorable
    assert backend.requests == 3 + 2  # equal samples are continued once; the parseable one is not continued
    good, junk = sorted(cued, key=lambda request: "<response>junk</response>" in request)
    assert good.endswith(f"It is fine.\n{SCORE_CUE}") and junk.endswith(SCORE_CUE) and "It is fine" not in junk
    counts = judge.counters()
    assert (counts["judge_cue_requests"], counts["judge_cued_samples"]) == (2, 4)
    assert (counts["judge_unparseable_samples"], counts["judge_unscorable_responses"]) == (2, 1)


def test_a_pairwise_judge_is_cued_with_the_verdict_brackets() -> None:
    def answer(request: str, n: int) -> list[str]:
        if request.endswith(VERDICT_CUE):
            a_part = request.split("<answer_a>")[1].split("</answer_a>")[0]
            return ["A]]" if a_part == "good" else "B]]"]
        return ["Both answers are okay."] * n

    judge = JudgeRanker(ScriptedJudge(answer), SamplingSettings(n=1, temperature=0.0), mode="pairwise")
    scored = judge.score_groups([group("Q?", "good", "bad")])[0]
    assert scored.win_probs == [[0.5, 1.0], [0.0, 0.5]]
    counts = judge.counters()
    assert counts["judge_cued_samples"] == 2 and counts.get("judge_unparseable_samples", 0) == 0


def test_pairwise_judge_asks_both_orders() -> None:
    def answer(request: str, n: int) -> list[str]:  # always prefers the text "good", and is biased to A otherwise
        a_part = request.split("<answer_a>")[1].split("</answer_a>")[0]
        b_part = request.split("<answer_b>")[1].split("</answer_b>")[0]
        if "good" in (a_part, b_part):
            return ["[[A]]" if a_part == "good" else "[[B]]"] * n
        return ["[[A]]"] * n

    backend = ScriptedJudge(answer)
    judge = JudgeRanker(backend, SamplingSettings(n=1, temperature=0.0), mode="pairwise")
    scored = judge.score_groups([group("Q?", "meh", "good", "bad")])[0]
    assert backend.requests == 6
    assert scored.win_probs is not None
    assert scored.win_probs[1][0] == 1.0 and scored.win_probs[1][2] == 1.0
    assert scored.win_probs[0][2] == 0.5  # the position bias cancels out across the two orders
    assert scored.scores == [0.25, 1.0, 0.25]
