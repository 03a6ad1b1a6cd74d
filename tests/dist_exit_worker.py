"""Worker for tests/test_distributed.py's exit test, started by ``torchrun``: a DDP model that has taken
gradient steps is still alive, held in a reference cycle (as a stage's trainer is by its hooks and closures),
when the runner's ``destroy_process_group`` is called; then a normal interpreter exit."""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from stages import distributed

assert distributed.init_process_group()
model = DistributedDataParallel(torch.nn.Linear(64, 64))
for _ in range(3):
    model(torch.randn(8, 64)).sum().backward()
holder: dict[str, object] = {"model": model}
holder["self"] = holder
distributed.destroy_process_group()
