"""RewardComponent in the project's training loop learns separable synthetic pairs; the held-out evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from alignment.data.collate import collate_preference, collate_prefix_shared
from alignment.evaluation.stats import estimate
from alignment.losses_reward import bradley_terry_loss
from alignment.models.loading import LoraSpec, load_tokenizer
from alignment.models.reward import build_reward_model, save_reward_model
from alignment.objectives import SingleObjective
from alignment.ranking.base import CandidateGroup
from alignment.ranking.reward_model import RewardModelRanker
from alignment.train.batches import CyclingBatches
from alignment.train.loop import JointTrainer, LoopSettings
from alignment.train.reward import RewardComponent, evaluate_reward_model, pair_rewards
from alignment.train.setup import make_accelerator, make_optimizer, make_scheduler
from tests.test_reward_model import synthetic_rows, tokenize_rows, write_causal_lm

STEPS = 40


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_causal_lm(tmp_path_factory.mktemp("reward_train") / "lm")


def heldout_batches(tokenizer: Any, count: int = 48, size: int = 16) -> list[dict[str, Any]]:
    pairs = tokenize_rows(tokenizer, synthetic_rows(count, seed=1234))
    return [collate_preference(pairs[i:i + size], int(tokenizer.pad_token_id)) for i in range(0, count, size)]


def train(model: Any, tokenizer: Any, checkpoint_dir: Path, lr: float) -> tuple[Any, list[dict[str, float]]]:
    """STEPS optimizer steps of RewardComponent through JointTrainer; returns the loop result and its evals."""
    pairs = tokenize_rows(tokenizer, synthetic_rows(160, seed=5))
    pad = int(tokenizer.pad_token_id)
    stream = CyclingBatches(pairs, batch_size=8, collate=lambda batch: collate_preference(batch, pad), seed=0)
    accelerator = make_accelerator("auto", "fp32", grad_accum=1)
    optimizer = make_optimizer(model, lr=lr, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, "constant", 0.0, STEPS)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    heldout = heldout_batches(tokenizer)

    def evaluate() -> dict[str, float]:
        return {f"eval/rm_{k}": v for k, v in evaluate_reward_model(model, heldout, resamples=200).items()}

    settings = LoopSettings(max_steps=STEPS, eval_every=STEPS, save_every=STEPS, keep_checkpoints=1, log_every=10,
                            progress=False)
    result = JointTrainer(accelerator, model, optimizer, scheduler, {0: RewardComponent()}, {0: stream},
                          SingleObjective(0), evaluate, settings, checkpoint_dir, None).run()
    return accelerator.unwrap_model(model), result.evals


@pytest.mark.parametrize(("lora", "lr"), [(False, 1e-3), (True, 5e-3)], ids=["full", "lora"])
def test_training_with_the_component_separates_held_out_pairs(causal_lm: Path, tmp_path: Path, lora: bool,
                                                              lr: float) -> None:
    tokenizer = load_tokenizer(str(causal_lm))
    model = build_reward_model(str(causal_lm), tokenizer, lora=LoraSpec(r=8, alpha=16) if lora else None)
    trained, evals = train(model, tokenizer, tmp_path / "checkpoints", lr)
    before, after = evals[0], evals[-1]
    assert after["step"] == STEPS and after["eval/rm_pairs"] == 48
    assert after["eval/rm_accuracy"] >= 0.9 and after["eval/rm_accuracy_ci_low"] > 0.75
    assert after["eval/rm_accuracy"] > before["eval/rm_accuracy"] + 0.2
    assert after["eval/rm_margin"] > 1.0 and after["eval/rm_loss"] < before["eval/rm_loss"]
    # the saved model ranks unseen pairs the same way through the ranker
    out = save_reward_model(trained, tokenizer, tmp_path / "rm")
    rows = synthetic_rows(24, seed=777)
    groups = [CandidateGroup(key=r.id, prompt=r.messages[0]["content"], messages=r.messages,
                             responses=(r.chosen, r.rejected)) for r in rows]
    scores = [g.scores for g in RewardModelRanker(str(out), device="cpu").score_groups(groups)]
    assert sum(float(s[0]) > float(s[1]) for s in scores if s[0] is not None and s[1] is not None) >= 21


def test_evaluation_numbers_follow_from_the_rewards(causal_lm: Path) -> None:
    tokenizer = load_tokenizer(str(causal_lm))
    model = build_reward_model(str(causal_lm), tokenizer, seed=3)
    model.train()
    batches = heldout_batches(tokenizer, count=20, size=8)
    result = evaluate_reward_model(model, batches, resamples=300, seed=4)
    assert model.training  # the mode is restored
    model.eval()
    with torch.no_grad():
        chosen, rejected = (torch.cat(side) for side in zip(*(pair_rewards(model, b) for b in batches), strict=True))
    correct = (chosen > rejected).float().tolist()
    expected = estimate(correct, resamples=300, seed=4)
    rewards = torch.cat([chosen, rejected])
    assert result["pairs"] == 20
    assert (result["accuracy"], result["accuracy_ci_low"], result["accuracy_ci_high"]) == pytest.approx(
        (expected.value, expected.low, expected.high))
    assert result["margin"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-6)
    assert result["loss"] == pytest.approx(float(bradley_terry_loss(chosen, rejected).losses.mean()), abs=1e-6)
    assert result["reward_mean"] == pytest.approx(float(rewards.mean()), abs=1e-6)
    assert result["reward_std"] == pytest.approx(float(rewards.std()), abs=1e-6) and result["reward_std"] > 0


def test_component_loss_is_the_batch_mean_and_reads_an_optional_margin(causal_lm: Path) -> None:
    tokenizer = load_tokenizer(str(causal_lm))
    model = build_reward_model(str(causal_lm), tokenizer).eval()
    pairs = tokenize_rows(tokenizer, synthetic_rows(4, seed=8))
    batch = collate_preference(pairs, int(tokenizer.pad_token_id))
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, batch)
        loss, logged = RewardComponent(center_rewards_coefficient=0.1).loss(model, batch)
        batch["margin"] = torch.tensor([0.5, 1.0, 0.0, 2.0])
        with_margin, _ = RewardComponent().loss(model, batch)
    expected = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.1).losses.mean()
    assert float(loss) == pytest.approx(float(expected), abs=1e-6) and logged["rm_loss"] == pytest.approx(float(loss))
    assert {"rm_accuracy", "rm_margin", "rm_centering"} <= logged.keys()
    shifted = bradley_terry_loss(chosen, rejected, batch["margin"]).losses.mean()
    assert float(with_margin) == pytest.approx(float(shifted), abs=1e-6)
    with pytest.raises(ValueError, match="prefix sharing"):
        RewardComponent().loss(model, collate_prefix_shared(pairs, int(tokenizer.pad_token_id)))
