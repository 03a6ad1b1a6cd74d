"""``alignment_run``: the Hydra entry point. ``alignment_run stage=<name> key=value ...``.

Command-line keys are checked against the typed config before Hydra composes it, so an unknown key fails with
the list of valid ones; ``validate()`` then reports every problem before any model loads.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alignment.data.formats import DataError
from pipeline.artifacts import ArtifactError
from stages.compose import CONFIG_DIR
from stages.config.errors import ConfigError
from stages.config.run_config import RunConfig
from stages.config.store import check_overrides, register_configs


def _to_run_config(cfg: DictConfig) -> RunConfig:
    from stages.config.recipe_settings import apply_stage_settings

    hydra_cfg = HydraConfig.get()
    apply_stage_settings(cfg, list(hydra_cfg.overrides.task))
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, RunConfig)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # each job of a sweep gets its own run directory, named by the values swept (e.g. model=small)
        swept = {arg.split("=", 1)[0] for arg in sys.argv[1:] if "=" in arg and "," in arg.split("=", 1)[1]}
        job = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0] in swept]
        run.run_dir = str(Path(run.run_dir) / (",".join(job) or str(hydra_cfg.job.num)))
    return run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        result = dispatch(_to_run_config(cfg))
    except (ConfigError, ArtifactError, DataError) as error:  # user errors: one clean message, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if cfg.stage.name == "verify" and not result["intact"]:
        sys.exit(1)  # the table printed says what is damaged and what to do


def dispatch(run: RunConfig) -> dict[str, object]:
    """Run a driver (``stage=iterate``: the rounds; ``stage=verify``: check a run's artifacts), else the one stage
    ``run.stage`` names."""
    if run.stage.name == "iterate":
        from stages.iterate import run_rounds

        return run_rounds(run)
    if run.stage.name == "verify":
        from stages.verify import verify_run

        return verify_run(run)
    from stages.runner import run_stage

    return run_stage(run)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from stages.config.recipe_settings import with_open_stage_settings

    register_configs()
    try:
        check_overrides([arg for arg in sys.argv[1:] if not arg.startswith("-")])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *with_open_stage_settings(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
