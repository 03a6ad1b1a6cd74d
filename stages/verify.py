"""``alignment_run stage=verify run_dir=...``: every complete artifact of a run re-hashed against its manifest.

A driver, dispatched by the CLI like ``stage=iterate`` (not a registered stage: it owns no stage directory and
writes nothing). The checking itself is :mod:`pipeline.verify`; this module walks the run, shows a progress bar
over the bytes read, and prints the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import ArtifactError
from pipeline.verify import RunReport, render_report, run_artifacts, verify_artifacts
from stages.builders.paths import layout
from stages.config.run_config import RunConfig
from stages.config.validate import validate_or_raise


def verify_run(run: RunConfig) -> dict[str, Any]:
    """Check every complete artifact of ``run.run_dir`` (and of its ``world_dir``), print the table and return
    ``{"intact": bool, "artifacts": {path: [problems]}}``. Raises ArtifactError when there is no run directory."""
    from tqdm.auto import tqdm

    validate_or_raise(run)
    run_layout = layout(run)
    if not run_layout.run_dir.is_dir():
        raise ArtifactError(f"run_dir {run_layout.run_dir} is not a directory: nothing to verify")
    complete, incomplete = run_artifacts(run_layout)
    total = sum(_listed_bytes(artifact) for artifact in complete)
    with tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=not run.stage.progress) as bar:
        checks = verify_artifacts(complete, on_file=lambda _name, size: bar.update(size))
    report = RunReport(checks, incomplete)
    print(render_report(report, run_layout.run_dir))
    return {"intact": report.intact, "artifacts": {str(c.artifact): c.details() for c in checks}}


def _listed_bytes(artifact: Path) -> int:
    """The bytes an artifact's manifest lists (0 when it cannot be read: the check then says why)."""
    from pipeline.artifacts import read_manifest

    try:
        return sum(int(entry.get("bytes", 0)) for entry in read_manifest(artifact)["outputs"].values())
    except (ArtifactError, KeyError, TypeError, AttributeError, ValueError):
        return 0
