"""Rounds improve the model: ``recipes/iterative/run.sh`` with the ``toy`` recipe at its own budget (1024 fresh
prompts x 8 samples, 100 steps per round) on the default embedded world, 2 rounds.

Measured signals: the mean verifier score of the policy's own samples (8192 per round, the quantity the loop
optimises) and greedy verifier accuracy on the 300 held-out world prompts. The run is deterministic on one CPU
(seeded sampling, one thread) but not across CPU models (their float kernels differ), so the thresholds hold on
both machines measured. Marked slow: the two rounds take about 11 minutes, a third of the default run; the loop
itself runs in the default tests (tests/test_iterate.py, tests/test_recipe_smol.py).
"""

from __future__ import annotations

import json

import pytest

from tests.test_iterate import output_tail, run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    result = run_script("--recipe", "toy", "--rounds", "2", "--run-dir", str(run_dir), "stage.progress=false")
    assert result.returncode == 0, output_tail(result)
    rows: list[dict[str, object]] = json.loads((run_dir / "iterate" / "summary.json").read_text())["rows"]
    return rows


def test_the_policy_samples_better_answers_after_a_round(two_rounds: list[dict[str, object]]) -> None:
    first, second = (float(str(row["sample_score"])) for row in two_rounds[1:])
    # round 1 samples from round 0's model, round 0 from the base model; measured 0.095 -> 0.134 (Intel Xeon;
    # round 1 0.135 on an AMD EPYC)
    assert second > first + 0.02


def test_greedy_verifier_accuracy_rises_after_the_second_round(two_rounds: list[dict[str, object]]) -> None:
    # measured on an Intel Xeon: base 0.227, round 0 0.203, round 1 0.240 (0.280 after a third round,
    # scripts/iterate_demo.py); on an AMD EPYC: base 0.220, round 0 0.257, round 1 0.263
    base, first, second = (float(str(row["verifier/accuracy"])) for row in two_rounds)
    assert second > first and second >= base
