"""The training benchmark's smoke run completes and prints its table and ratio line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.watchdog import run_watched

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"


@pytest.mark.slow
def test_bench_train_quick_prints_the_table_and_ratios():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = run_watched([sys.executable, str(SCRIPT), "--quick", "--threads", "1"], env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ours_dpo_fastest" in done.stdout and "trl_dpo_precompute_ref" in done.stdout
    ratio_line = done.stdout.strip().splitlines()[-1]
    assert ratio_line.startswith("RATIOS ours/trl_default=") and "maxright/sequential=" in ratio_line


@pytest.mark.slow
def test_bench_train_schedule_subset_prints_their_ratio_against_sequential():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = run_watched([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--configs", "sequential,maxright"],
                       env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    ratio_line = done.stdout.strip().splitlines()[-1]
    assert ratio_line.startswith("RATIOS small_full_fine-tuning maxright/sequential=")
    assert "alright/" not in ratio_line and "mix/" not in ratio_line
