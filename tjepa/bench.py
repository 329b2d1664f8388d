"""Benchmarks on synthetic batches with TinyStories-like document lengths.

    python -m tjepa.bench masking --batch 64 --views 3 --json
    python -m tjepa.bench step --config configs/tinystories.toml --views 3 --batch 64 --json

Each prints a human line, then (with ``--json``) one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from tqdm.auto import tqdm

from tjepa.masking import MaskingConfig, MaskSampler

LENGTH_MEAN, LENGTH_STD, LENGTH_MIN = 190, 60, 8  # TinyStories stories, in cl100k tokens


def synthetic_documents(batch: int, block_size: int, vocab_size: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, T) and lengths (B,) with TinyStories-like lengths, truncated to the block."""
    lengths = torch.randn(batch, generator=generator) * LENGTH_STD + LENGTH_MEAN
    lengths = lengths.round().long().clamp(LENGTH_MIN, block_size)
    tokens = torch.randint(1, vocab_size, (batch, int(lengths.max())), generator=generator)
    tokens = tokens.masked_fill(torch.arange(tokens.shape[1]) >= lengths[:, None], 0)
    return tokens, lengths


def bench_masking(batch: int, views: int, mixture: str = "seed", block_size: int = 256,
                  iters: int = 200, warmup: int = 20) -> dict:
    """Milliseconds to turn one batch of documents into a MaskedBatch, on this CPU."""
    sampler = MaskSampler(MaskingConfig(mixture, views=views), seed=0)
    generator = torch.Generator().manual_seed(0)
    docs = [synthetic_documents(batch, block_size, 5000, generator) for _ in range(8)]
    for i in range(warmup):
        sampler(*docs[i % len(docs)])
    times = []
    for i in tqdm(range(iters), desc="masking", leave=False):
        started = time.perf_counter()
        sampler(*docs[i % len(docs)])
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "bench": "masking",
        "mixture": mixture,
        "batch": batch,
        "views": views,
        "ms_per_batch": round(1000 * times[len(times) // 2], 3),  # median: robust to noise
        "ms_p90": round(1000 * times[int(0.9 * len(times))], 3),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    masking = sub.add_parser("masking", help="time the UL2 sampler on one batch")
    masking.add_argument("--batch", type=int, default=64)
    masking.add_argument("--views", type=int, default=3)
    masking.add_argument("--mixture", default="seed", help="a mixture in configs/masking/")
    masking.add_argument("--iters", type=int, default=200)
    masking.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.what == "masking":
        result = bench_masking(args.batch, args.views, args.mixture, iters=args.iters)
        print(f"masking: {result['ms_per_batch']} ms per batch of {args.batch} documents "
              f"x {args.views} views (median of {args.iters})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
