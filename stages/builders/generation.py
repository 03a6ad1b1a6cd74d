"""Generation settings from a stage config: sampling, backend options, device pinning and the policy source."""

from __future__ import annotations

import os
from typing import Any

from stages.builders.paths import model_path, policy_path
from stages.config.run_config import RunConfig

DEVICE_ENV = "ALIGNMENT_GENERATION_DEVICE"  # set once the devices of this process are pinned


def sampling_settings(stage: Any, seed: int) -> Any:
    """The stage's sampling fields as :class:`alignment.generation.base.SamplingSettings`."""
    from alignment.generation.base import SamplingSettings

    return SamplingSettings(n=stage.n, temperature=stage.temperature, top_p=stage.top_p, top_k=stage.top_k,
                            max_new_tokens=stage.max_new_tokens, stop=tuple(stage.stop), seed=seed)


def backend_options(run: RunConfig, device: str | None = None) -> Any:
    """The stage's runtime backend fields (and the model dtype) as ``BackendOptions``."""
    from alignment.generation.base import BackendOptions

    stage = run.stage
    return BackendOptions(dtype=run.model.dtype, batch_size=stage.batch_size,
                          tensor_parallel_size=stage.tensor_parallel_size, max_model_len=stage.max_model_len,
                          kv_cache_gb=stage.kv_cache_gb, gpu_memory_utilization=stage.gpu_memory_utilization,
                          enforce_eager=stage.enforce_eager, lora_mode=stage.lora_mode,
                          attn_implementation=run.model.attn_implementation, seed=run.seed, device=device)


def pin_local_devices(run: RunConfig) -> str | None:
    """Under torchrun with several ranks per node, restrict this rank's GPUs to its own slice (for vLLM's
    engine process) and return the hf backend's device; ``None`` when there is nothing to pin."""
    import torch

    from alignment.generation.sharding import local_devices

    local_rank, local_workers = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if DEVICE_ENV in os.environ:
        return os.environ[DEVICE_ENV]
    if local_workers <= 1 or not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    mine = local_devices(devices, local_rank, run.stage.tensor_parallel_size)
    # A process whose CUDA is already initialised keeps its device list; one that is not sees only `mine`.
    index = devices.index(mine[0]) if torch.cuda.is_initialized() else 0
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    os.environ[DEVICE_ENV] = f"cuda:{index}"
    return os.environ[DEVICE_ENV]


def model_source(run: RunConfig, path: str) -> Any:
    """``path`` as a ``ModelSource`` (an adapter whose recorded base is missing falls back to the run's base)."""
    from alignment.generation.sources import resolve_model_source

    return resolve_model_source(path, base_model=model_path(run))


def policy_source(run: RunConfig) -> Any:
    """The round's policy as a ``ModelSource``."""
    return model_source(run, policy_path(run))
