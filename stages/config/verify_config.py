"""The config of ``stage=verify``, a driver (dispatched by the CLI, not a registered stage)."""

from __future__ import annotations

from dataclasses import dataclass

from stages.config.stage_base import StageConfig


@dataclass
class VerifyConfig(StageConfig):
    """``stage=verify run_dir=...``: re-hash every file of every complete artifact of the run (each round's
    stage directories and the embedded world's ``prepare``) and compare it with its manifest. Prints one line
    per artifact (OK, or which files are corrupted, missing or extra, and how to redo it); exits 1 when any
    artifact is damaged. Reads no config section and writes nothing."""

    name: str = "verify"
