"""scripts/iterate_demo.py's combined plot: each round's win rate against the previous round and the start."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.summary import interval_points

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import iterate_demo  # noqa: E402  (a script beside its helper module experiments.py)

ROWS = [{"round": 0, "win_rate/win_rate": 0.48, "win_rate/win_rate.low": 0.39, "win_rate/win_rate.high": 0.57,
         "vs_start/win_rate": 0.48, "vs_start/win_rate.low": 0.39, "vs_start/win_rate.high": 0.57},
        {"round": 1, "win_rate/win_rate": 0.55, "win_rate/win_rate.low": 0.45, "win_rate/win_rate.high": 0.64,
         "vs_start/win_rate": 0.6, "vs_start/win_rate.low": 0.5, "vs_start/win_rate.high": 0.7}]


def test_both_win_rates_are_drawn_with_their_intervals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: dict[str, Any] = {}
    real = iterate_demo.plot_series_with_intervals

    def spy(series: Any, path: Path, **kwargs: Any) -> Path:
        drawn.update(series)
        return real(series, path, **kwargs)

    monkeypatch.setattr(iterate_demo, "plot_series_with_intervals", spy)
    path = iterate_demo.plot_win_rates(ROWS, tmp_path / "win_rates.png")
    assert drawn == {"vs the previous round": [("0", 0.48, 0.39, 0.57), ("1", 0.55, 0.45, 0.64)],
                     "vs the starting model": [("0", 0.48, 0.39, 0.57), ("1", 0.6, 0.5, 0.7)]}
    assert path.stat().st_size > 0


def test_a_round_without_a_win_rate_is_left_out_not_drawn_as_zero() -> None:
    rows: list[dict[str, Any]] = [{"round": 0}, ROWS[1]]
    assert interval_points(rows, "vs_start/win_rate") == [("1", 0.6, 0.5, 0.7)]
