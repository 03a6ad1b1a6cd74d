"""scripts/filter_eval.py's selection quality after each pass of a multi-pass selector, on hand-made weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from alignment.data.readers import write_jsonl
from pipeline.layout import stage_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import filter_eval  # noqa: E402  (a script beside its helper module experiments.py)


def test_pass_quality_scores_each_snapshot_against_the_noise_labels(tmp_path: Path) -> None:
    labels = {"a": "clean", "b": "clean", "c": "swapped", "d": "truncated"}
    folder = stage_dir(tmp_path, 0, "filter")
    folder.mkdir(parents=True)
    # pass 1: the clean rows rank first (AUROC 1); pass 2: the swapped row overtakes one clean row
    write_jsonl(folder / "selection_pass1.jsonl", [{"id": "a", "weight": 1.4}, {"id": "b", "weight": 1.2},
                                                   {"id": "c", "weight": 0.8}, {"id": "d", "weight": 0.6}])
    write_jsonl(folder / "selection_pass2.jsonl", [{"id": "a", "weight": 1.4}, {"id": "b", "weight": 0.7},
                                                   {"id": "c", "weight": 1.3}, {"id": "d", "weight": 0.6}])
    first, second = filter_eval.pass_quality(tmp_path, labels, keep_fraction=0.5)
    assert first["auroc"] == 1.0 and first["precision"] == 1.0 and first["auroc_swapped"] == 1.0
    # clean-vs-noisy pairs: (a,c) (a,d) (b,d) ordered right, (b,c) wrong → 3/4; kept {a, c}: precision 1/2
    assert second["auroc"] == pytest.approx(0.75) and second["auroc_swapped"] == pytest.approx(0.5)
    assert second["auroc_truncated"] == 1.0 and second["precision"] == pytest.approx(0.5)


def test_pass_quality_is_empty_for_a_one_pass_selector(tmp_path: Path) -> None:
    assert filter_eval.pass_quality(tmp_path, {"a": "clean"}, keep_fraction=0.7) == []
