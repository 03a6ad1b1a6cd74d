"""The run layout, in one place: every stage name, file name and directory of a run.

A run directory holds one directory per (round, stage), ``{run_dir}/round_{k:02d}/{stage}/``, plus caches
shared by its rounds (``{run_dir}/cache/<kind>/``) and the multi-round summary (``{run_dir}/iterate/``). The
embedded world's artifact is round 0's ``prepare`` directory of the run, or of another run named by
``world_dir``. Stage modules ask this module for paths and file names; none of them spells one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignment.models.files import MERGED_SUBDIR

# --- stages ----------------------------------------------------------------------------------------------------
PREPARE = "prepare"
CREATE_INSTRUCTIONS = "create_instructions"
GENERATE = "generate"
RANK = "rank"
FILTER = "filter"
TRAIN_RM = "train_rm"
JOINT_TRAIN = "joint_train"
EVALUATE = "evaluate"


class Files:
    """Names inside a stage directory (and inside its ``logs/``)."""

    CONFIG = "config.yaml"
    LOGS = "logs"
    METRICS = "metrics.jsonl"  # in logs/
    SHARDS = "shards"  # resumable per-shard work of generate and rank, removed once merged
    CHECKPOINTS = "checkpoints"  # training checkpoints, removed once the artifact is complete
    WORLD_DATA = "world"  # prepare: one <split>.jsonl per world split
    MODEL = "model"  # prepare, joint_train, train_rm: a Hugging Face model directory
    MERGED = MERGED_SUBDIR  # model/merged: the merged weights of a LoRA run
    PROMPTS = "prompts.jsonl"
    RESPONSES = "responses.jsonl"
    GENERATION_INFO = "generation.json"  # in logs/
    RANKED = "ranked.jsonl"
    PAIRS = "pairs.jsonl"
    RANKING_INFO = "ranking.json"  # in logs/
    SELECTION = "selection.jsonl"
    SELECTION_PASS = "selection_pass{}.jsonl"  # filter with epochs > 1: {id, weight} after each pass
    FILTERED = "filtered.jsonl"
    WEIGHTS_PLOT = "weights.png"
    LOSS_SPACE_PLOT = "loss_space.png"
    EVAL_JSON = "eval.json"
    EVAL_MARKDOWN = "eval.md"
    ALPACA_EVAL = "alpaca_eval"  # evaluate: <model key>/model_outputs.json and annotations.json
    MODEL_OUTPUTS = "model_outputs.json"
    ANNOTATIONS = "annotations.json"
    MT_BENCH = "mt_bench"
    OUTPUT_LENGTHS_PLOT = "output_lengths.png"
    SUMMARY_JSON = "summary.json"
    SUMMARY_MARKDOWN = "summary.md"


# The file (or directory) of each stage that the next stage reads.
STAGE_OUTPUT = {
    PREPARE: Files.WORLD_DATA,
    CREATE_INSTRUCTIONS: Files.PROMPTS,
    GENERATE: Files.RESPONSES,
    RANK: Files.PAIRS,
    FILTER: Files.FILTERED,
    TRAIN_RM: Files.MODEL,
    JOINT_TRAIN: Files.MODEL,
    EVALUATE: Files.EVAL_JSON,
}

# {run_dir}/cache/<kind>: reference log-probs and evaluation generations, shared by every round of a run
CACHE_DIR = "cache"
REF_LOGPS_CACHE = "ref_logps"
EVALUATE_CACHE = "evaluate"
SUMMARY_DIR = "iterate"


def round_dir_name(round_index: int) -> str:
    return f"round_{round_index:02d}"


@dataclass(frozen=True)
class RunLayout:
    """The directories of one run. ``world_dir`` is the run holding the embedded world (default: this run);
    ``cache_root`` the directory of caches several runs may share (default: ``{run_dir}/cache``)."""

    run_dir: Path
    world_dir: Path | None = None
    cache_root: Path | None = None

    @classmethod
    def of(cls, run_dir: str | Path, world_dir: str | Path | None = None,
           cache_root: str | Path | None = None) -> RunLayout:
        return cls(Path(run_dir), Path(world_dir) if world_dir else None, Path(cache_root) if cache_root else None)

    def stage_dir(self, round_index: int, stage: str) -> Path:
        """``{run_dir}/round_{k:02d}/{stage}``: the directory one stage invocation owns."""
        return self.run_dir / round_dir_name(round_index) / stage

    def output(self, round_index: int, stage: str, name: str | None = None) -> Path:
        """A file of a stage's artifact: ``name``, or the stage's main output (:data:`STAGE_OUTPUT`)."""
        return self.stage_dir(round_index, stage) / (name or STAGE_OUTPUT[stage])

    def cache_dir(self, kind: str) -> Path:
        return (self.cache_root or self.run_dir / CACHE_DIR) / kind

    def summary_dir(self) -> Path:
        return self.run_dir / SUMMARY_DIR

    # --- the embedded world ---------------------------------------------------------------------------------
    def world_artifact(self) -> Path:
        """Round 0's ``prepare`` directory of the run that holds the embedded world."""
        return RunLayout(self.world_dir or self.run_dir).stage_dir(0, PREPARE)

    def world_split(self, split: str) -> Path:
        return self.world_artifact() / Files.WORLD_DATA / f"{split}.jsonl"

    def world_model(self) -> Path:
        return self.world_artifact() / Files.MODEL


def stage_dir(run_dir: str | Path, round_index: int, stage: str) -> Path:
    """``{run_dir}/round_{k:02d}/{stage}`` (:meth:`RunLayout.stage_dir` of a run without a separate world)."""
    return RunLayout.of(run_dir).stage_dir(round_index, stage)


def trained_model(artifact: str | Path) -> Path:
    """The model a training artifact hands on: its merged weights when a LoRA run wrote them (so adapters of
    successive rounds never stack on the wrong base), else ``model/``."""
    model = Path(artifact) / Files.MODEL
    merged = model / Files.MERGED
    return merged if merged.is_dir() else model
