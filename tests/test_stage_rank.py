"""``stage=rank`` end to end on a real ``stage=generate`` artifact of the tiny world (hf backend)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from alignment.data.readers import read_rows
from alignment.data.rows import PreferenceRow
from alignment.ranking.pairrm_model import load_pairrm
from alignment.ranking.tiny import build_pairrm_checkpoint, build_reward_checkpoint
from alignment.world.tasks import verify
from pipeline.artifacts import ArtifactError, partial_dir
from pipeline.layout import stage_dir
from stages.runner import run_stage
from tests.conftest import compose_run

FAST = ("world=ci", "stage.progress=false")


@pytest.fixture(scope="module")
def generated(prepared_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with the world and a generate artifact (3 responses to the first 8 prompts)."""
    run_dir = tmp_path_factory.mktemp("ranked") / "base"
    shutil.copytree(prepared_world / "round_00" / "prepare", run_dir / "round_00" / "prepare")
    run_stage(compose_run("stage=generate", *FAST, f"run_dir={run_dir}", "stage.backend=hf", "stage.n=3",
                          "stage.max_new_tokens=8", "stage.max_prompts=8"))
    return run_dir


@pytest.fixture
def run_dir(generated: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(generated, target)
    return target


def rank(run_dir: Path, *overrides: str) -> dict[str, Any]:
    return run_stage(compose_run("stage=rank", *FAST, f"run_dir={run_dir}", *overrides))


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_verifier_pairs_from_a_generate_artifact_are_training_rows(run_dir: Path) -> None:
    manifest = rank(run_dir, "stage.ranker=verifier", "stage.pair_rule=all_pairs")
    out = stage_dir(run_dir, 0, "rank")
    responses = read(stage_dir(run_dir, 0, "generate") / "responses.jsonl")
    ranked = read(out / "ranked.jsonl")
    assert [r["prompt_id"] for r in ranked] == [r["prompt_id"] for r in responses]
    for row in ranked:
        assert row["scores"] == [verify(row["prompt"], text) for text in row["responses"]]
    pairs = read(out / "pairs.jsonl")
    assert all(p["chosen_score"] == 1.0 and p["rejected_score"] == 0.0 and p["margin"] == 1.0 for p in pairs)
    preference = read_rows(out / "pairs.jsonl", kind="preference").rows
    assert all(isinstance(row, PreferenceRow) for row in preference)
    assert [getattr(row, "chosen", None) for row in preference] == [p["chosen"] for p in pairs]
    metrics = manifest["metrics"]
    assert metrics["pairs"] == len(pairs) and metrics["prompts"] == 8 and metrics["candidates"] == 24
    considered = metrics["selection"]["candidate_pairs"]
    assert considered > 0 and metrics["tie_rate"] == round(metrics["selection"]["ties"] / considered, 4)


def test_pairrm_and_reward_model_rank_every_candidate(run_dir: Path, tmp_path: Path) -> None:
    pairrm = build_pairrm_checkpoint(tmp_path / "pairrm")
    manifest = rank(run_dir, "stage.ranker=pairrm", f"stage.ranker_model={pairrm}", "stage.batch_size=8",
                    "stage.source_max_tokens=12", "stage.candidate_max_tokens=4")
    ranked = read(stage_dir(run_dir, 0, "rank") / "ranked.jsonl")
    assert all(len(r["win_probs"]) == 3 and all(s is not None for s in r["scores"]) for r in ranked)
    counts = manifest["metrics"]["ranker_counts"]
    assert counts["comparisons"] == 8 * 6 and counts["truncated_candidates"] > 0
    tokenizer = load_pairrm(str(pairrm))[1]
    long_prompts = sum(len(tokenizer.encode("<|source|>" + r["prompt"])) > 12 for r in ranked)
    assert long_prompts > 0 and counts["truncated_sources"] == 6 * long_prompts  # 6 comparisons per prompt
    reward = build_reward_checkpoint(tmp_path / "rm")
    manifest = rank(run_dir, "stage.ranker=reward_model", f"stage.ranker_model={reward}", "force=true")
    assert manifest["metrics"]["ranker_counts"]["scored"] == 24
    assert manifest["metrics"]["pairs"] + manifest["metrics"]["selection"]["groups_without_pair"] == 8


def test_judge_with_the_world_model_counts_unparseable_scores(run_dir: Path) -> None:
    manifest = rank(run_dir, "stage.ranker=judge", "stage.backend=hf", "stage.judge_samples=2",
                    "stage.judge_max_new_tokens=6", "stage.batch_size=24")
    counts = manifest["metrics"]["ranker_counts"]
    assert counts["judge_samples"] == 2 * 24
    unscorable = sum(s is None for r in read(stage_dir(run_dir, 0, "rank") / "ranked.jsonl") for s in r["scores"])
    assert counts["judge_unscorable_responses"] == unscorable > 0  # the tiny world model writes no rubric score


def test_a_crashed_rank_resumes_only_missing_shards(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alignment.world.ranker import VerifierRanker

    real = VerifierRanker.score_groups
    calls: list[int] = []

    def crash_on_second(self, groups):  # noqa: ANN001, ANN202
        calls.append(len(groups))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(self, groups)

    monkeypatch.setattr(VerifierRanker, "score_groups", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rank(run_dir, "stage.shard_size=3")
    shards = sorted(p.name for p in (partial_dir(stage_dir(run_dir, 0, "rank")) / "shards").iterdir())
    assert shards == ["shard-00000-of-00003.jsonl"]
    manifest = rank(run_dir, "stage.shard_size=3")
    assert manifest["metrics"]["shards"]["scored"] == [1, 2] and manifest["metrics"]["shards"]["reused"] == [0]
    assert len(read(stage_dir(run_dir, 0, "rank") / "ranked.jsonl")) == 8


def test_rank_needs_a_generate_artifact_and_a_model_for_pairrm(prepared_world: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    shutil.copytree(prepared_world / "round_00" / "prepare", empty / "round_00" / "prepare")
    with pytest.raises(ArtifactError, match="stage=generate"):
        rank(empty)
    assert any("stage.ranker_model" in p for p in compose_run("stage=rank", "stage.ranker=pairrm").validate())
