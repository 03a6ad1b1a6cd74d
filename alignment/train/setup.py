"""Building the accelerate/DeepSpeed runtime, optimizer and LR schedule of a training run."""

from __future__ import annotations

from typing import Any

import torch


def make_accelerator(strategy: str, precision: str, grad_accum: int, zero_stage: int = 2, offload: bool = False,
                     max_grad_norm: float = 1.0, trackers: list[str] | None = None,
                     project_dir: str | None = None, micro_batch_size: int = 1) -> Any:
    """An ``Accelerator`` for plain/DDP (``auto``/``ddp``) or DeepSpeed ZeRO (``deepspeed``) training.

    The LR scheduler is stepped by the loop once per optimizer step (``step_scheduler_with_optimizer=False``),
    so the schedule does not depend on the number of processes.
    """
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    plugin = None
    if strategy == "deepspeed":
        _single_process_env()
        plugin = DeepSpeedPlugin(
            zero_stage=zero_stage, gradient_accumulation_steps=grad_accum, gradient_clipping=max_grad_norm,
            offload_optimizer_device="cpu" if offload else "none",
            offload_param_device="cpu" if offload and zero_stage == 3 else "none",
        )
        # batches are fed by our own streams, not a prepared DataLoader, so DeepSpeed is told the size directly
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    return Accelerator(
        # without cpu=True accelerate ignores a torchrun world on a CPU-only machine (each rank trains alone)
        cpu=plugin is None and not torch.cuda.is_available(),
        mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=grad_accum,
        step_scheduler_with_optimizer=False,
        deepspeed_plugin=plugin,
        log_with=trackers or None,
        project_dir=project_dir,
    )


def _single_process_env() -> None:
    """Describe a one-process world when not launched by torchrun/accelerate, so DeepSpeed does not go looking
    for MPI (what ``accelerate launch`` would set)."""
    import os
    import socket

    if "RANK" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (LoRA adapters only, when LoRA is on)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_ratio: float, max_steps: int) -> Any:
    """Linear warm-up over ``warmup_ratio·max_steps`` then cosine / linear decay to 0, or constant."""
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=int(warmup_ratio * max_steps),
                         num_training_steps=max_steps)


def sequential_switch_step(unit: str, fraction: float, max_steps: int, steps_per_epoch: int) -> int:
    """Where a sequential run switches objective: a fraction of the step budget, or of whole epochs of the
    first objective's data; always leaves at least one step to each objective."""
    if unit == "epochs":
        epochs = max_steps / max(1, steps_per_epoch)
        switch = round(fraction * epochs) * steps_per_epoch
    else:
        switch = round(fraction * max_steps)
    return min(max(1, switch), max_steps - 1)
