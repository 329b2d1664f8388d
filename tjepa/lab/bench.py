"""Benchmarks on synthetic batches with TinyStories-like document lengths.

    python -m tjepa.lab.bench masking --batch 64 --views 3 --json
    python -m tjepa.lab.bench step --config configs/tinystories.toml --views 3 --batch 64 --json
    python -m tjepa.lab.bench step --config configs/tinystories.toml --views 3 --compile \
        --set train.pack_length=2048 --batch 64,128,192 --max-memory-gib 24 --json

Each prints a human line per measurement and (with ``--json``) one JSON object after it: a
sweep over batch sizes prints one per batch, the last line being the last batch measured.

    python -m tjepa.lab.bench table bench.jsonl [--readme docs/performance.md --marker bench-cpu]

sets the ``step`` JSON lines found in files (logs too: other lines are skipped) in a markdown
table, one row per measurement; ``--readme`` writes it between the README's markers.

    python -m tjepa.lab.bench pairs RUN [RUN ...] --pairs FILE [--readme PAGE --marker NAME]

times ``python -m tjepa.pairs`` on each run, whole, and tables the seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tjepa.batches import BatchStream, mask_sampler
from tjepa.masking import MaskedBatch, MaskingConfig, MaskSampler
from tjepa.packing import pack, padding_share
from tjepa.runs import load_config
from tjepa.step import TrainingStep, resolve_model
from tjepa.tables import command_line, markdown_table, write_readme_table

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
                  iters: int = 200, warmup: int = 20, pack_length: int = 0) -> dict:
    """Milliseconds to turn one batch of documents into a MaskedBatch on this CPU, and with
    ``pack_length`` to lay it out in packed rows after that (``pack_ms``): the batch thread's
    work in training, which must keep ahead of the step."""
    sampler = MaskSampler(MaskingConfig(mixture, views=views), seed=0)
    generator = torch.Generator().manual_seed(0)
    docs = [synthetic_documents(batch, block_size, 5000, generator) for _ in range(8)]
    for i in range(warmup):
        sampler(*docs[i % len(docs)])
    mask_times, pack_times = [], []
    for i in tqdm(range(iters), desc="masking", leave=False):
        started = time.perf_counter()
        masked = sampler(*docs[i % len(docs)])
        mask_times.append(time.perf_counter() - started)
        if pack_length:
            started = time.perf_counter()
            pack(masked, pack_length)
            pack_times.append(time.perf_counter() - started)
    median = lambda times: round(1000 * sorted(times)[len(times) // 2], 3)  # robust to noise
    return {
        "bench": "masking",
        "mixture": mixture,
        "batch": batch,
        "views": views,
        "ms_per_batch": median(mask_times),
        "ms_p90": round(1000 * sorted(mask_times)[int(0.9 * len(mask_times))], 3),
        "pack_length": pack_length,
        "pack_ms": median(pack_times) if pack_length else None,
        "threads": torch.get_num_threads(),
    }


def bench_step(config_path: str | None = None, device: str = "auto", views: int | None = None,
               batches: Sequence[int] = (), compile: bool | None = None, steps: int = 20,
               warmup: int = 5, vocab_size: int = 8192,
               overrides: list[str] | None = None, profile: int = 0,
               max_memory_gib: float | None = None) -> Iterator[dict]:
    """The real training step — masking, target encoder, context encoder, predictor, loss,
    backward, AdamW, EMA — timed on synthetic TinyStories-like documents after warm-up: one
    result per batch size in ``batches`` (the config's batch when empty), yielded as each is
    measured. The model is built and compiled once for all of them, so a sweep pays the
    compiler once (plus a recompile where a shape first varies).

    ``data_ms`` is the time the batch thread takes to make a batch, ``data_wait_ms`` the time
    each timed step waited for one (near 0 when the thread keeps ahead).

    ``overrides`` are ``SECTION.KEY=VALUE`` strings, as ``python -m tjepa.train --set``.
    ``profile`` > 0 profiles that many more steps at the first batch size and prints the
    operators that took the most device (or CPU) time, to stderr. On CUDA the sweep stops
    after the first batch whose peak memory passes ``max_memory_gib``, or that runs out of
    memory (reported on stderr): larger batches need more.
    """
    overrides = [*(overrides or []), f"train.max_steps={steps + warmup}"]
    if views:
        overrides.append(f"masking.views={views}")
    if compile is not None:
        overrides.append(f"train.compile={'true' if compile else 'false'}")
    config = load_config(config_path, overrides)
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    model_config = resolve_model(config, device, config.model.vocab_size or vocab_size)
    config = replace(config, model=model_config)
    training_step = TrainingStep(config, device)
    sampler = mask_sampler(config)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def one_step(i: int, stream: BatchStream) -> None:
        training_step(i, stream.next())

    for n, batch in enumerate(batches or [config.data.batch_size]):
        config = replace(config, data=replace(config.data, batch_size=batch))
        generator = torch.Generator().manual_seed(0)
        docs = [synthetic_documents(batch, config.data.block_size, model_config.vocab_size,
                                    generator) for _ in range(4)]
        # as in training: masked, split, packed and pinned ahead, in a thread
        stream = BatchStream(_Cycle(docs), sampler, training_step.split, pin=cuda)
        step = partial(one_step, stream=stream)
        try:
            started = time.perf_counter()
            for i in tqdm(range(warmup), desc=f"batch {batch}: warm-up (compiles)",
                          leave=False):
                step(i)
            sync()
            warmup_s = time.perf_counter() - started
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            started, waited = time.perf_counter(), stream.waiting_s
            for i in tqdm(range(steps), desc=f"batch {batch}: step", leave=False):
                step(warmup + i)
            sync()
            seconds = (time.perf_counter() - started) / steps
            data_wait_s = (stream.waiting_s - waited) / steps
            data_s = stream.making_s / max(stream.made, 1)
            peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
            host_syncs = _count_host_syncs(partial(step, 0)) if cuda else None
            device_busy = (_print_profile(step, profile, device, first=warmup + steps)
                           if profile and n == 0 else None)
        except torch.OutOfMemoryError:
            print(f"batch {batch}: out of memory; the sweep stops here", file=sys.stderr)
            return
        finally:
            stream.close()

        tokens_per_step = sum(int(d[1].sum()) for d in docs) / len(docs)
        # masks drawn as the timed ones were (not the same ones), for FLOPs and padding
        shadow = mask_sampler(config)
        masked = [shadow(*d) for d in docs]
        laid_out = [training_step.split(m).parts[0] for m in masked]
        flops = step_flops(model_config, batch, tokens_per_step, masked,
                           has_predictor=training_step.model.mask_id is None)
        peak = _peak_flops(device)
        yield {
            "bench": "step",
            "config": str(config_path or "configs/default.toml"),
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "compile": config.train.compile,
            "compile_scope": config.train.compile_scope,
            "attention": model_config.attention,
            "views": config.masking.views,
            "batch": batch,
            "pad_multiple": config.train.pad_multiple,
            "pack_length": config.train.pack_length,
            "recompute_activations": config.train.recompute_activations,
            "padding": round(sum(map(padding_share, laid_out)) / len(laid_out), 4),
            "step_ms": round(1000 * seconds, 2),
            "tokens_per_s": round(tokens_per_step / seconds, 1),
            "tflops": round(flops / seconds / 1e12, 2),
            "mfu": round(flops / seconds / peak, 4) if peak else None,
            "peak_mem_gib": round(peak_gib, 2) if peak_gib is not None else None,
            "data_ms": round(1000 * data_s, 2),
            "data_wait_ms": round(1000 * data_wait_s, 2),
            "host_syncs": host_syncs,
            "device_busy": round(device_busy, 3) if device_busy is not None else None,
            "warmup_s": round(warmup_s, 1),
            "threads": torch.get_num_threads(),
        }
        if max_memory_gib and peak_gib is not None and peak_gib > max_memory_gib:
            print(f"batch {batch}: peak {peak_gib:.1f} GiB passes {max_memory_gib} GiB; the "
                  f"sweep stops here", file=sys.stderr)
            return


class _Cycle:
    """The same few batches of documents over and over, as a ``DocumentLoader`` hands them."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches, self.position = batches, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.position += 1
        return self.batches[(self.position - 1) % len(self.batches)]


def _count_host_syncs(step, set_mode=None, known_sync=None) -> dict | None:
    """The CUDA calls in one step that make the host wait for the device, as torch's sync
    debug mode reports them: how many, and where (up to 3 places). None when this torch does
    not deliver those warnings (checked first on ``known_sync``, a call known to wait).
    ``set_mode`` and ``known_sync`` default to CUDA's (tests pass stand-ins)."""
    set_mode = set_mode or torch.cuda.set_sync_debug_mode
    known_sync = known_sync or (lambda: torch.ones((), device="cuda").item())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_mode("warn")
        try:
            known_sync()
            delivered = len(caught) > 0
            caught.clear()
            step()
        finally:
            set_mode("default")
    if not delivered:
        return None
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    places = sorted({f"{w.filename}:{w.lineno}" for w in syncs})
    return {"count": len(syncs), "where": places[:3]}


def step_flops(config, batch: int, tokens_per_step: float, masked: list[MaskedBatch],
               has_predictor: bool = True) -> float:
    """Useful FLOPs of one step, on real (unpadded) tokens: per token and layer, 2 FLOPs per
    weight plus 4·S·d for attention scores and values, forward; backward doubles it again.
    Without a predictor (the encoder student, ``tjepa.variants.student``): the context
    encoder reads the targets' ``[MASK]`` slots too, and a two-layer head (4·d² weights)
    replaces the predictor."""
    views = len(masked[0].document)
    context = sum(int(m.context_valid.sum()) for m in masked) / len(masked)  # per step
    targets = sum(int(m.target_valid.sum()) for m in masked) / len(masked)

    def forward(tokens: float, seq: float, dim: int, depth: int) -> float:
        weights = depth * (4 + 2 * config.mlp_ratio) * dim * dim
        return 2 * weights * tokens + 4 * tokens * seq * dim * depth

    d, dp = config.dim, config.predictor_dim
    target = forward(tokens_per_step, tokens_per_step / batch, d, config.depth)
    if not has_predictor:
        read = context + targets
        return (target + 3 * forward(read, read / views, d, config.depth)
                + 3 * 2 * 4 * d * d * targets)
    ctx = 3 * forward(context, context / views, d, config.depth)
    pred = 3 * forward(context + targets, (context + targets) / views, dp,
                       config.predictor_depth)
    return target + ctx + pred


def _print_profile(step, n_steps: int, device: torch.device, first: int = 0,
                   rows: int = 25) -> float | None:
    """The operators that took the most time over steps ``first``, ``first + 1``, … (``n_steps``
    of them), to stderr. On CUDA, returns the share of the wall time the device was busy
    (kernel time summed): well under 1, the host or a sync keeps it waiting. The profiler
    slows the host, so it is a lower bound."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for i in range(first, first + n_steps):
            step(i)
        if cuda:
            torch.cuda.synchronize(device)
        wall_us = 1e6 * (time.perf_counter() - started)
    events = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=rows, max_name_column_width=60), file=sys.stderr)
    if not cuda:
        return None
    busy_us = sum(event.self_device_time_total for event in events)
    print(f"profiled {n_steps} steps: {wall_us / n_steps / 1000:.1f} ms each, the device busy "
          f"{busy_us / n_steps / 1000:.1f} ms of it ({100 * busy_us / wall_us:.0f} %)",
          file=sys.stderr)
    return busy_us / wall_us


def _batch_sizes(text: str) -> tuple[int, ...]:
    """``64`` or ``64,128,192``: the batch sizes of a sweep."""
    try:
        sizes = tuple(int(size) for size in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes like 64 or 64,128, "
                                         f"got {text!r}")
    return sizes


def bench_table(results: list[dict]) -> str:
    """``bench_step`` results (their JSON lines) as a markdown table, one row each; columns
    that no result fills (MFU, memory, syncs on a CPU) are left out."""
    head = ["device", "config", "views", "batch", "layout", "path", "ms/step",
            "input tokens/s", "TFLOP/s", "MFU", "peak memory", "padding", "warm-up",
            "data wait", "host syncs", "device busy"]
    dash = "—"
    rows = []
    for r in results:
        path = (f"compiled ({r['compile_scope']}), {r['attention']}" if r["compile"]
                else f"eager, {r['attention']}")
        path += ", recompute" if r.get("recompute_activations") else ""
        speed = r["tokens_per_s"]
        syncs = r.get("host_syncs")
        rows.append([
            r["device"], Path(r["config"]).stem, str(r["views"]), str(r["batch"]),
            f"packed, L {r['pack_length']}" if r["pack_length"] else "padded", path,
            f"{r['step_ms']:,.1f}", f"{speed:,.0f}" if speed < 1e4 else f"{speed / 1e3:,.1f}k",
            f"{r['tflops']:.3g}", dash if r["mfu"] is None else f"{r['mfu']:.1%}",
            dash if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f} GiB",
            f"{r['padding']:.0%}", f"{r['warmup_s']:.0f} s",
            dash if r.get("data_wait_ms") is None else f"{r['data_wait_ms']:.1f} ms",
            dash if syncs is None else str(syncs["count"]),
            dash if r.get("device_busy") is None else f"{r['device_busy']:.0%}",
        ])
    kept = [i for i in range(len(head)) if any(row[i] != dash for row in rows)]
    return markdown_table([head[i] for i in kept], ([row[i] for i in kept] for row in rows))


def read_results(paths: Sequence[str | Path]) -> list[dict]:
    """The ``step`` results among the lines of these files, in order."""
    results = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.startswith('{"bench": "step"'):
                results.append(json.loads(line))
    return results


def bench_pairs(run_dir: str | Path, pairs_file: str | Path, device: str = "cpu") -> dict:
    """Time ``python -m tjepa.pairs`` on one run, whole: the run and its twin loaded, the
    readout fitted, every sentence scored by the run, its twin and the n-grams."""
    from tjepa import pairs

    started = time.perf_counter()
    report = pairs.score_run(run_dir, pairs_file, device=device, progress=False)
    seconds = time.perf_counter() - started
    return {"bench": "pairs", "run": Path(run_dir).name, "objective": report["objective"],
            "pairs": report["pairs"], "seconds": round(seconds, 1),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "threads": torch.get_num_threads()}


def pairs_table(results: list[dict]) -> str:
    """``bench_pairs`` results as a markdown table, one row each."""
    return markdown_table(
        ["device (threads)", "run", "objective", "pairs", "seconds", "pairs/s"],
        ([f"{r['device']} ({r['threads']})", r["run"], r["objective"], f"{r['pairs']:,}",
          f"{r['seconds']:.1f}", f"{r['pairs'] / r['seconds']:.0f}"] for r in results))


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
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    masking = sub.add_parser("masking", help="time the UL2 sampler on one batch")
    masking.add_argument("--batch", type=int, default=64)
    masking.add_argument("--views", type=int, default=3)
    masking.add_argument("--mixture", default="seed", help="a mixture in configs/masking/")
    masking.add_argument("--iters", type=int, default=200)
    masking.add_argument("--pack-length", type=int, default=0,
                         help="also time packing the masked batch into rows of this length")
    masking.add_argument("--json", action="store_true")
    step = sub.add_parser("step", help="time the whole training step")
    step.add_argument("--config", help="TOML config (default configs/default.toml)")
    step.add_argument("--device", default="auto")
    step.add_argument("--views", type=int)
    step.add_argument("--batch", type=_batch_sizes, default=(), metavar="B[,B...]",
                      help="batch size, or several to sweep with one compiled model")
    step.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    step.add_argument("--steps", type=int, default=20)
    step.add_argument("--warmup", type=int, default=5)
    step.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override a config value, e.g. --set train.pad_multiple=64")
    step.add_argument("--profile", type=int, default=0, metavar="STEPS",
                      help="profile this many more steps (first batch size); print the "
                           "costliest operators")
    step.add_argument("--max-memory-gib", type=float, default=None,
                      help="CUDA: stop the sweep after a batch whose peak passes this")
    step.add_argument("--json", action="store_true")
    timed = sub.add_parser("pairs", help="time python -m tjepa.pairs on runs")
    timed.add_argument("run_dirs", nargs="+", metavar="run_dir")
    timed.add_argument("--pairs", required=True, help="BLiMP-format JSON lines")
    timed.add_argument("--device", default="cpu")
    timed.add_argument("--readme", help="write the table between this file's markers")
    timed.add_argument("--marker", default="bench-pairs")
    table = sub.add_parser("table", help="set the step results of JSON-line files in a table")
    table.add_argument("files", nargs="+")
    table.add_argument("--readme", help="write the table between this file's markers")
    table.add_argument("--marker", default="bench",
                       help="the markers' name: <!-- NAME:start --> … <!-- NAME:end -->")
    args = parser.parse_args(argv)

    if args.what == "pairs":
        text = pairs_table([bench_pairs(r, args.pairs, args.device) for r in args.run_dirs])
        print(text)
        if args.readme:
            write_readme_table(args.readme, args.marker, text,
                               command_line("tjepa.lab.bench", argv))
        return 0
    if args.what == "table":
        results = read_results(args.files)
        if not results:
            parser.error(f"no step results in {', '.join(args.files)}")
        text = bench_table(results)
        print(text)
        if args.readme:
            write_readme_table(args.readme, args.marker, text,
                               command_line("tjepa.lab.bench", argv))
        return 0

    if args.what == "masking":
        result = bench_masking(args.batch, args.views, args.mixture, iters=args.iters,
                               pack_length=args.pack_length)
        packing = (f"; packing into rows of {args.pack_length}: {result['pack_ms']} ms more"
                   if args.pack_length else "")
        print(f"masking: {result['ms_per_batch']} ms per batch of {args.batch} documents "
              f"x {args.views} views (median of {args.iters}){packing}")
    if args.what == "step":
        for result in bench_step(args.config, args.device, args.views, args.batch,
                                 args.compile, args.steps, args.warmup, overrides=args.set,
                                 profile=args.profile, max_memory_gib=args.max_memory_gib):
            memory = (f", peak {result['peak_mem_gib']} GiB" if result["peak_mem_gib"]
                      is not None else "")
            print(f"step: {result['step_ms']} ms, {result['tokens_per_s']:,.0f} input "
                  f"tokens/s, {result['tflops']} TFLOP/s on {result['device']} (batch "
                  f"{result['batch']}, {result['views']} views, compile {result['compile']}, "
                  f"{100 * result['padding']:.0f} % of the token slots padding{memory}); "
                  f"batches made in {result['data_ms']} ms, the step waited "
                  f"{result['data_wait_ms']} ms for each")
            if args.json:
                print(json.dumps(result), flush=True)
        return 0
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
