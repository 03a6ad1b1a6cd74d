"""Worker for tests/test_distributed.py, started by ``torchrun --nproc_per_node 2``.

Runs the real joint_train stage on every rank and records, per rank, the objective chosen at each optimizer
step and a checksum of the final weights into ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from alignment.train.loop import JointTrainer
from stages.compose import compose_run
from stages.runner import run_stage


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ["RANK"])
    plans: list[list[int]] = []
    original_run = JointTrainer.run

    def recording_run(self):
        schedule_plan = self.schedule.plan

        def recorded_plan(step):  # the loop asks once per optimizer step
            plan = schedule_plan(step)
            plans.append(sorted(plan))
            return plan

        self.schedule.plan = recorded_plan
        result = original_run(self)
        weights = [p.detach().double() for p in self.accelerator.unwrap_model(self.model).parameters()]
        record = {"plans": plans, "checksum": float(sum(w.sum() for w in weights)),
                  "abs_checksum": float(sum(w.abs().sum() for w in weights)), "world_size": os.environ["WORLD_SIZE"]}
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        return result

    JointTrainer.run = recording_run  # type: ignore[method-assign]
    torch.set_num_threads(1)
    run_stage(compose_run("stage=joint_train", *overrides))


if __name__ == "__main__":
    main()
