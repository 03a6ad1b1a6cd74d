"""Linear weight interpolation of two models of the same base: ``alpha·A + (1−alpha)·B`` as a new model directory.

    .venv/bin/python scripts/interpolate_models.py --a runs/x/only-sft --b runs/x/only-pref --alpha 0.5 --out DIR

``--a``/``--b``: model directories, LoRA adapter directories, or joint_train/train_rm artifacts (their trained
model: merged weights when the run saved them). The output is a normal Hugging Face directory that every stage
loads (``model.name_or_path=DIR``, or ``stage.models=[DIR]`` in evaluate).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alignment.models.interpolate import interpolate_models
from pipeline.artifacts import is_complete
from pipeline.layout import trained_model


def model_dir(path: str) -> str:
    """A training artifact's trained model, else the path itself."""
    return str(trained_model(path)) if is_complete(path) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--alpha", type=float, required=True, help="weight of --a (0..1)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    out = interpolate_models(model_dir(args.a), model_dir(args.b), args.alpha, args.out, args.dtype)
    print(f"wrote {out} = {args.alpha}·{args.a} + {1 - args.alpha:.4g}·{args.b}")


if __name__ == "__main__":
    main()
