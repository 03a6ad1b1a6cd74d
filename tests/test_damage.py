"""A damaged artifact is reported as damage: never skipped as complete, never blamed on a config change.

A fake two-stage pipeline under the artifact contract: ``upstream`` writes a model directory and a jsonl,
``downstream`` reads the model directory as a plain input (content-hashed, like a round-0 policy inside the
world's ``prepare``). Files are damaged the ways a disk, a copy or a hand edit damage them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline import verify
from pipeline.artifacts import (
    MANIFEST,
    SUCCESS,
    ArtifactError,
    DamagedArtifactError,
    StageInput,
    StageSpec,
    StaleArtifactError,
    read_manifest,
)
from pipeline.layout import RunLayout, stage_dir
from pipeline.stage_run import StageRun
from pipeline.verify import check_artifact

WEIGHTS = bytes(range(256)) * 40
ROWS = '{"a": 1}\n{"a": 2}\n'


def upstream_spec() -> StageSpec:
    return StageSpec(stage="upstream", stage_version=1, round_index=0, config={"size": 3}, inputs={})


def downstream_spec(upstream: Path) -> StageSpec:
    return StageSpec(stage="downstream", stage_version=1, round_index=0, config={},
                     inputs={"policy": StageInput(str(upstream / "model"))})


def run_upstream(final: Path, force: bool = False) -> bool:
    """Run the upstream stage; True when it did the work (False: skipped)."""
    with StageRun(final, upstream_spec(), force=force, announce=lambda _m: None) as run:
        if run.skipped:
            return False
        (run.work_dir / "model").mkdir()
        (run.work_dir / "model" / "weights.bin").write_bytes(WEIGHTS)
        (run.work_dir / "model" / "config.json").write_text('{"layers": 2}')
        (run.work_dir / "rows.jsonl").write_text(ROWS)
        run.commit(outputs=["model", "rows.jsonl"])
    return True


def run_downstream(final: Path, upstream: Path) -> bool:
    with StageRun(final, downstream_spec(upstream), announce=lambda _m: None) as run:
        if run.skipped:
            return False
        (run.work_dir / "out.txt").write_text("trained")
        run.commit(outputs=["out.txt"])
    return True


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    final = stage_dir(tmp_path / "run", 0, "upstream")
    assert run_upstream(final)
    return final


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def add_extra(path: Path) -> None:
    (path.parent / "adapter_config.json").write_text("{}")


def break_manifest_json(path: Path) -> None:
    path.write_text(path.read_text()[:-40])


def edit_manifest_metric(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["config"]["size"] = 4  # valid JSON, but not what was committed
    path.write_text(json.dumps(manifest))


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # kind: (file damaged, how, what the report names)
    "flipped byte": ("model/weights.bin", flip_byte, "corrupted model/weights.bin"),
    "truncated": ("rows.jsonl", truncate, "corrupted rows.jsonl: 13 bytes, the manifest says 18"),
    "deleted": ("model/config.json", Path.unlink, "missing model/config.json"),
    "extra file": ("model/config.json", add_extra, "extra model/adapter_config.json"),
    "manifest cut short": (MANIFEST, break_manifest_json, "corrupted manifest.json"),
    "manifest edited": (MANIFEST, edit_manifest_metric, "corrupted manifest.json"),
    "marker damaged": (SUCCESS, flip_byte, "corrupted _SUCCESS"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_artifact_is_refused_instead_of_skipped(upstream: Path, kind: str) -> None:
    name, damage, reported = DAMAGE[kind]
    damage(upstream / name)
    with pytest.raises(DamagedArtifactError) as raised:
        run_upstream(upstream)
    message = str(raised.value)
    assert reported in message and str(upstream) in message
    assert "force=true" in message and "stage=verify" in message
    assert "different config" not in message


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_input_is_named_as_damage_not_as_changed_inputs(upstream: Path, kind: str) -> None:
    downstream = stage_dir(upstream.parent.parent, 0, "downstream")
    assert run_downstream(downstream, upstream)
    name, damage, reported = DAMAGE[kind]
    damage(upstream / name)
    with pytest.raises(ArtifactError) as raised:
        run_downstream(downstream, upstream)
    assert isinstance(raised.value, DamagedArtifactError) and not isinstance(raised.value, StaleArtifactError)
    message = str(raised.value)
    assert f"{upstream} (input policy of downstream) is damaged" in message and reported in message
    assert "content changed" not in message


def test_force_keeps_the_damaged_artifact_aside_and_redoes_it(upstream: Path) -> None:
    flip_byte(upstream / "model" / "weights.bin")
    assert run_upstream(upstream, force=True)
    kept = [p for p in upstream.parent.iterdir() if p.name.startswith("upstream.corrupted-")]
    assert len(kept) == 1 and (kept[0] / "model" / "weights.bin").read_bytes() != WEIGHTS
    assert (upstream / "model" / "weights.bin").read_bytes() == WEIGHTS
    assert check_artifact(upstream).intact
    assert not run_upstream(upstream)  # intact again: skipped


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the artifact checks hash from now on."""
    hashed: list[Path] = []
    real = verify.sha256_file

    def counted(path: str | Path, **options: Any) -> str:
        hashed.append(Path(path))
        return real(path, **options)

    monkeypatch.setattr(verify, "sha256_file", counted)
    return hashed


def test_an_intact_artifact_is_skipped_without_hashing_its_files(upstream: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = count_hashes(monkeypatch)
    assert not run_upstream(upstream)
    assert hashed == []  # only sizes and mtimes: the skip path stays cheap for a model of any size


def test_a_copy_with_new_mtimes_is_confirmed_by_hashing_and_skipped(upstream: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    copy = stage_dir(tmp_path / "copied", 0, "upstream")
    shutil.copytree(upstream, copy, copy_function=shutil.copy)  # contents only: every mtime is "now"
    finished = read_manifest(copy)["timestamps"]["finished"]
    later = finished + 60
    for file in copy.rglob("*"):
        os.utime(file, (later, later))
    hashed = count_hashes(monkeypatch)
    assert not run_upstream(copy)
    assert sorted(p.name for p in hashed) == ["config.json", "rows.jsonl", "weights.bin"]


def test_only_the_deep_check_finds_a_flip_whose_mtime_was_restored(upstream: Path) -> None:
    weights = upstream / "model" / "weights.bin"
    before = weights.stat()
    flip_byte(weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert check_artifact(upstream, deep=False).intact  # the documented limit of the cheap check
    deep = check_artifact(upstream, deep=True)
    assert deep.corrupted == {"model/weights.bin": "content differs from the manifest's sha256"}
    assert deep.missing == [] and deep.extra == []


def test_success_records_the_manifest_sha256(upstream: Path) -> None:
    assert (upstream / SUCCESS).read_text().strip() == verify.manifest_sha256(upstream)


def test_an_artifact_with_an_empty_success_marker_is_still_checked(upstream: Path) -> None:
    (upstream / SUCCESS).write_text("")  # committed before the marker recorded the manifest's sha256
    assert check_artifact(upstream).intact
    flip_byte(upstream / "model" / "weights.bin")
    assert "model/weights.bin" in check_artifact(upstream).corrupted


def test_read_manifest_reports_an_unreadable_manifest_as_damage(upstream: Path) -> None:
    (upstream / MANIFEST).write_bytes(b"\xff\xfe{")
    with pytest.raises(DamagedArtifactError, match="manifest.json is damaged"):
        read_manifest(upstream)


def test_a_run_lists_its_world_elsewhere_its_stages_and_its_partial_work(upstream: Path, tmp_path: Path) -> None:
    run_dir = upstream.parent.parent
    world = stage_dir(tmp_path / "world_run", 0, "prepare")
    with StageRun(world, StageSpec("prepare", 1, 0, {}, {}), announce=lambda _m: None) as run:
        (run.work_dir / "world.jsonl").write_text(ROWS)
        run.commit(outputs=["world.jsonl"])
    partial = stage_dir(run_dir, 0, "generate.partial")
    partial.mkdir()
    shutil.copytree(upstream, upstream.with_name("upstream.stale-20260101-000000"))  # history, not an artifact
    complete, incomplete = verify.run_artifacts(RunLayout.of(run_dir, world.parent.parent))
    assert complete == [world, upstream] and incomplete == [partial]
    flip_byte(world / "world.jsonl")
    report = verify.RunReport(verify.verify_artifacts(complete), incomplete)
    table = verify.render_report(report, run_dir)
    assert not report.intact
    assert f"{world}  DAMAGED" in table and "round_00/upstream" in table and "round_00/generate.partial" in table
    assert f"stage=prepare round=0 run_dir={world.parent.parent}" in table and "1 of 2 artifact(s) damaged" in table
