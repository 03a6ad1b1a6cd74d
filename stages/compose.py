"""Building a typed :class:`RunConfig` from override strings, exactly as ``alignment_run`` would.

For scripts, tests and the Python driver: ``run_stage(compose_run("stage=joint_train", "objective=mix"))``.
"""

from __future__ import annotations

from pathlib import Path

from stages.config.run_config import RunConfig
from stages.config.store import check_overrides, register_configs

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def compose_run(*overrides: str) -> RunConfig:
    """Compose ``configs/config.yaml`` with ``overrides`` into the typed run config (unknown keys fail)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    check_overrides(list(overrides))
    from stages.config.recipe_settings import apply_stage_settings, with_open_stage_settings

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=with_open_stage_settings(list(overrides)))
    apply_stage_settings(cfg, list(overrides))
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, RunConfig)
    return run
