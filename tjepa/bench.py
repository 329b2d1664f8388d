"""Benchmarks on synthetic batches with TinyStories-like document lengths.

    python -m tjepa.bench masking --batch 64 --views 3 --json
    python -m tjepa.bench step --config configs/tinystories.toml --views 3 --batch 64 --json
    python -m tjepa.bench step --config configs/tinystories.toml --set train.pack_length=0

Each prints a human line, then (with ``--json``) one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from tjepa.masking import MaskedBatch, MaskingConfig, MaskSampler
from tjepa.packing import padding_share

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


def bench_step(config_path: str | None = None, device: str = "auto", views: int | None = None,
               batch: int | None = None, compile: bool | None = None, steps: int = 20,
               warmup: int = 5, vocab_size: int = 8192,
               overrides: list[str] | None = None, profile: int = 0) -> dict:
    """The real training step — masking, target encoder, context encoder, predictor, loss,
    backward, AdamW, EMA — timed on synthetic TinyStories-like documents after warm-up.
    ``overrides`` are ``SECTION.KEY=VALUE`` strings, as ``python -m tjepa.train --set``.
    ``profile`` > 0 profiles that many more steps after timing and prints the operators that
    took the most device (or CPU) time, to stderr."""
    from tjepa.train import (
        Distributed,
        build_step_parts,
        load_config,
        optimizer_step,
        resolve_model,
        step_parts,
    )

    overrides = [*(overrides or []), f"train.max_steps={steps + warmup}"]
    if views:
        overrides.append(f"masking.views={views}")
    if batch:
        overrides.append(f"data.batch_size={batch}")
    if compile is not None:
        overrides.append(f"train.compile={'true' if compile else 'false'}")
    config = load_config(config_path, overrides)
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    model_config = resolve_model(config, device, config.model.vocab_size or vocab_size)
    config = replace(config, model=model_config)
    model, optimizer, schedule, sampler, autocast = build_step_parts(config, device)
    generator = torch.Generator().manual_seed(0)
    block = config.data.block_size
    docs = [synthetic_documents(config.data.batch_size, block, model_config.vocab_size,
                                generator) for _ in range(4)]
    pinned = device.type == "cuda"

    def one_step(i: int) -> None:
        # masking and packing run inline here (training makes them ahead, in a thread); the
        # host still works while the device runs the step before, which nothing waits for
        tokens, lengths = docs[i % len(docs)]
        parts, total_targets = step_parts(sampler(tokens, lengths), config, Distributed())
        parts = [part.pin_memory() for part in parts] if pinned else parts
        schedule.apply(optimizer, i)
        optimizer_step(model, model, optimizer, parts, total_targets, Distributed(), device,
                       autocast, config.optim.grad_clip)
        model.update_target(schedule.momentum(i))

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    for i in tqdm(range(warmup), desc="warm-up (compiles)", leave=False):
        one_step(i)
    sync()
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for i in tqdm(range(steps), desc="step", leave=False):
        one_step(warmup + i)
    sync()
    seconds = (time.perf_counter() - started) / steps
    if profile:
        _print_profile(lambda i: one_step(warmup + steps + i), profile, device)

    tokens_per_step = sum(int(d[1].sum()) for d in docs) / len(docs)
    masked = [sampler(*d) for d in docs]  # drawn as the timed batches were, not the same ones
    laid_out = [step_parts(m, config, Distributed())[0][0] for m in masked]
    flops = step_flops(model_config, config.data.batch_size, tokens_per_step, masked)
    peak = _peak_flops(device)
    return {
        "bench": "step",
        "config": str(config_path or "configs/default.toml"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "compile": config.train.compile,
        "attention": model_config.attention,
        "views": config.masking.views,
        "batch": config.data.batch_size,
        "pad_multiple": config.train.pad_multiple,
        "pack_length": config.train.pack_length,
        "padding": round(sum(map(padding_share, laid_out)) / len(laid_out), 4),
        "step_ms": round(1000 * seconds, 2),
        "tokens_per_s": round(tokens_per_step / seconds, 1),
        "tflops": round(flops / seconds / 1e12, 2),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda" else None,
        "warmup_s": round(warmup_s, 1),
        "threads": torch.get_num_threads(),
    }


def step_flops(config, batch: int, tokens_per_step: float, masked: list[MaskedBatch]) -> float:
    """Useful FLOPs of one step, on real (unpadded) tokens: per token and layer, 2 FLOPs per
    weight plus 4·S·d for attention scores and values, forward; backward doubles it again."""
    views = len(masked[0].document)
    context = sum(int(m.context_valid.sum()) for m in masked) / len(masked)  # per step
    targets = sum(int(m.target_valid.sum()) for m in masked) / len(masked)

    def forward(tokens: float, seq: float, dim: int, depth: int) -> float:
        weights = depth * (4 + 2 * config.mlp_ratio) * dim * dim
        return 2 * weights * tokens + 4 * tokens * seq * dim * depth

    d, dp = config.dim, config.predictor_dim
    target = forward(tokens_per_step, tokens_per_step / batch, d, config.depth)
    ctx = 3 * forward(context, context / views, d, config.depth)
    pred = 3 * forward(context + targets, (context + targets) / views, dp,
                       config.predictor_depth)
    return target + ctx + pred


def _print_profile(step, n_steps: int, device: torch.device, rows: int = 25) -> None:
    """The operators that took the most time over ``n_steps`` steps, to stderr."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for i in range(n_steps):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60),
          file=sys.stderr)


def _peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the card, for MFU; None on CPU or an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
                      ("A10", 125e12), ("4090", 165e12)):
        if key in name:
            return peak
    return None


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
    step = sub.add_parser("step", help="time the whole training step")
    step.add_argument("--config", help="TOML config (default configs/default.toml)")
    step.add_argument("--device", default="auto")
    step.add_argument("--views", type=int)
    step.add_argument("--batch", type=int)
    step.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    step.add_argument("--steps", type=int, default=20)
    step.add_argument("--warmup", type=int, default=5)
    step.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override a config value, e.g. --set train.pad_multiple=64")
    step.add_argument("--profile", type=int, default=0, metavar="STEPS",
                      help="profile this many more steps; print the costliest operators")
    step.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.what == "masking":
        result = bench_masking(args.batch, args.views, args.mixture, iters=args.iters)
        print(f"masking: {result['ms_per_batch']} ms per batch of {args.batch} documents "
              f"x {args.views} views (median of {args.iters})")
    if args.what == "step":
        result = bench_step(args.config, args.device, args.views, args.batch, args.compile,
                            args.steps, args.warmup, overrides=args.set,
                            profile=args.profile)
        print(f"step: {result['step_ms']} ms, {result['tokens_per_s']:,.0f} input tokens/s, "
              f"{result['tflops']} TFLOP/s on {result['device']} (batch {result['batch']}, "
              f"{result['views']} views, compile {result['compile']}, "
              f"{100 * result['padding']:.0f} % of the token slots padding)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
