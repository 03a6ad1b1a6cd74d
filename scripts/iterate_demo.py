"""Rounds improve the model: the ``toy`` recipe for several rounds on the embedded world, with the table.

    .venv/bin/python scripts/iterate_demo.py                      # 3 rounds on the default world
    .venv/bin/python scripts/iterate_demo.py --rounds 2 world=ci  # extra key=value overrides go to every stage

Runs ``stage=iterate recipe=toy`` (the same stages ``recipes/iterative/run.sh`` runs, resumable), prints the
per-round verifier accuracy (row "base": the starting model; row k: after round k) and copies the summary
table and its accuracy plot to ``--out`` (default ``docs/``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from stages.compose import compose_run
from stages.iterate import SUMMARY_DIR
from stages.runner import run_stage

ACCURACY = "verifier/accuracy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-dir", default="runs/iterate_demo")
    parser.add_argument("--out", default="docs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every stage")
    args = parser.parse_args()
    started = time.perf_counter()
    run = compose_run("stage=iterate", "recipe=toy", f"rounds={args.rounds}", f"run_dir={args.run_dir}",
                      *args.overrides)
    summary = run_stage(run)
    rows = summary["rows"]
    accuracy = {str(row["round"]): row.get(ACCURACY) for row in rows}
    last = str(args.rounds - 1)
    print(f"verifier accuracy: base {accuracy['base']:.3f}, round 0 {accuracy['0']:.3f}, "
          f"round {last} {accuracy[last]:.3f} ({time.perf_counter() - started:.0f} s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(args.run_dir) / SUMMARY_DIR
    shutil.copyfile(source / "summary.md", out / "iterate.md")
    shutil.copyfile(source / f"{ACCURACY.replace('/', '_')}.png", out / "iterate.png")
    print(f"table and plot copied to {out / 'iterate.md'} and {out / 'iterate.png'}")


if __name__ == "__main__":
    main()
