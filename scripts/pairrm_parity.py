"""Compare our PairRM implementation with llm-blender's ``DebertaV2PairRM`` on the same checkpoint and inputs.

llm-blender needs transformers 4.x, so run this in a separate environment, for example::

    python -m venv /tmp/blender && . /tmp/blender/bin/activate
    pip install "transformers<5" torch safetensors sentencepiece protobuf
    pip install git+https://github.com/yuchenlin/LLM-Blender.git
    pip install -e /path/to/this/repo --no-deps
    python scripts/pairrm_parity.py --model llm-blender/PairRM-hf   # or a local copy / a tiny test checkpoint

The script encodes the same (source, candidate1, candidate2) triples with our :func:`encode_pairs`, runs both
models on those ids and prints the largest absolute logit difference (expected below ~1e-4 in float32) and
whether the comparison outcomes agree. ``--tiny DIR`` first writes a random tiny checkpoint in the same format
(useful to check the wiring without downloading the real model).
"""

from __future__ import annotations

import argparse

import torch

from alignment.ranking.pairrm_model import encode_pairs, load_pairrm
from alignment.ranking.tiny import build_pairrm_checkpoint

SOURCES = ["hello!", "I love you!", "What is the capital of France?"]
FIRSTS = ["hi!", "I hate you!", "Paris is the capital of France."]
SECONDS = ["f**k off!", "I love you, too!", "It is Lyon."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llm-blender/PairRM-hf")
    parser.add_argument("--tiny", default=None, help="write a random tiny checkpoint here and compare on it")
    args = parser.parse_args()
    path = str(build_pairrm_checkpoint(args.tiny)) if args.tiny else args.model
    from llm_blender.pair_ranker.pairrm import DebertaV2PairRM  # only in the llm-blender environment

    ours, tokenizer = load_pairrm(path)
    theirs = DebertaV2PairRM.from_pretrained(path).eval()
    encoded = encode_pairs(tokenizer, SOURCES, FIRSTS, SECONDS)
    with torch.no_grad():
        our_logits = ours(encoded.input_ids, encoded.attention_mask)
        their_logits = theirs(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask).logits
    difference = float((our_logits - their_logits).abs().max())
    agree = bool(((our_logits > 0) == (their_logits > 0)).all())
    print(f"ours:   {our_logits.tolist()}\ntheirs: {their_logits.tolist()}")
    print(f"max |difference| = {difference:.3e}; outcomes agree: {agree}")
    raise SystemExit(0 if difference < 1e-4 and agree else 1)


if __name__ == "__main__":
    main()
