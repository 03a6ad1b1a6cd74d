"""Names of files inside a model directory that the library itself writes or reads (no torch import)."""

from __future__ import annotations

ADAPTER_CONFIG = "adapter_config.json"  # a peft adapter directory
MERGED_SUBDIR = "merged"  # beside a saved LoRA adapter: the full model with the adapter merged in
