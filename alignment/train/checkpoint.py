"""Training checkpoints: model/adapter, optimizer, scheduler and RNG states (through accelerate), plus the
trainer's own state (step, data positions, objective sampler, eval history) as JSON.

A checkpoint is written to ``step-NNNNNN.tmp`` and renamed when complete, so a crash while saving never leaves
a checkpoint that looks usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

PREFIX = "step-"
STATE_FILE = "trainer_state.json"


def complete_checkpoints(directory: Path) -> list[Path]:
    """Finished checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.name.startswith(PREFIX) and not p.name.endswith(".tmp")
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest finished checkpoint, or None."""
    found = complete_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(accelerator: Any, directory: Path, step: int, trainer_state: dict[str, Any],
                    keep: int) -> Path:
    """Save everything needed to continue exactly after optimizer step ``step``; keep the newest ``keep``."""
    final = directory / f"{PREFIX}{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
        os.rename(tmp, final)
        for old in complete_checkpoints(directory)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG from ``path`` and return the trainer state saved with it."""
    accelerator.load_state(str(path))
    state: dict[str, Any] = json.loads((path / STATE_FILE).read_text())
    return state
