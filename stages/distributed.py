"""Multi-process invocations (``torchrun``/``accelerate launch``): rank 0 owns the stage directory.

Every rank runs the stage's work in the same ``.partial`` directory; only rank 0 takes the lock, decides
skip/refuse/resume and commits, and the decision is broadcast so all ranks agree.
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_secondary_node() -> bool:
    """A node > 0 of a multi-node job launched without torchrun (``NODE_RANK``/``NNODES`` only)."""
    return "WORLD_SIZE" not in os.environ and int(os.environ.get("NODE_RANK", "0")) > 0


def init_process_group() -> bool:
    """Join the process group torchrun described in the environment (gloo on CPU, nccl on GPUs); True when
    this call created it (and so should destroy it)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def destroy_process_group(synchronize: bool = True) -> None:
    """Leave the process group cleanly; after a failure, leave without waiting for ranks that may never arrive.

    The stage's objects that still hold the group (a DDP reducer and its gloo work, kept alive by reference
    cycles) are collected first: left to the interpreter's exit, gloo's threads can outlive them and abort the
    process (``terminate called without an active exception``) after the stage has already committed.
    """
    import gc

    import torch.distributed as dist

    if dist.is_initialized():
        gc.collect()
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """``value`` from rank 0 on every rank."""
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
