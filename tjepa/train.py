"""Train a text JEPA: config, loop, logging, checkpoints, exact resume.

    python -m tjepa.train                                   # tinytales, default config, CPU/GPU
    python -m tjepa.train --config configs/tinystories.toml --data data/tinystories
    python -m tjepa.train --resume out/default-20260101-120000 --max-steps 4000
    torchrun --nproc_per_node=4 -m tjepa.train --config configs/tinystories.toml

A run folder holds ``config.toml`` (resolved: enough to resume or evaluate), ``metrics.jsonl``
(one JSON object per logged step), ``last.pt``, ``best.pt`` (lowest validation loss) and
``loss.png``. SIGTERM and Ctrl-C save ``last.pt`` and exit cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import signal
import statistics
import sys
import threading
import time
import tomllib
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tjepa import data
from tjepa.config import ConfigError, check, dump_toml, from_dict, load_toml, to_dict
from tjepa.jepa import JEPA, OptimConfig, Schedule, make_optimizer
from tjepa.masking import CONFIG_DIR, MaskedBatch, MaskingConfig, MaskSampler
from tjepa.model import ModelConfig, count_parameters
from tjepa.monitor import CollapseAlarm, MonitorConfig, measure
from tjepa.packing import PackedBatch, pack

DEFAULT_CONFIG = CONFIG_DIR / "default.toml"
CHECKPOINT_FORMAT = "tjepa-checkpoint-1"


@dataclass
class DataConfig:
    dir: str = "data/tinytales"
    source: str = "tinytales"  # prepared into ``dir`` when it is missing; "" never prepares
    block_size: int = 256  # documents are truncated to this many tokens
    batch_size: int = 32  # documents per optimizer step, over all ranks and micro-batches
    min_tokens: int = 8  # shorter documents are skipped

    def __post_init__(self) -> None:
        check(self.block_size >= 2, f"block_size must be >= 2, got {self.block_size}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.min_tokens >= 2, f"min_tokens must be >= 2, got {self.min_tokens}")


@dataclass
class TrainConfig:
    max_steps: int = 1000  # also the length of the LR, weight-decay and momentum schedules
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False
    # what torch.compile sees: "block" (one graph shared by all blocks: compiles in about half
    # the time) or "network" (each whole network: fuses across blocks, compiles longer)
    compile_scope: Literal["block", "network"] = "block"
    pad_multiple: int = 1  # round padded widths up to this (128 with compile: few shapes)
    # > 0: lay every pass out in rows of this many slots, sequences end to end, no padding
    # (tjepa.packing); at least data.block_size. 0: one padded row per document or view.
    pack_length: int = 0
    grad_accum: int = 1
    # recompute each block's activations in the backward instead of storing them: a fraction
    # of the activation memory for about a third more compute in the networks that learn
    recompute_activations: bool = False
    log_interval: int = 10
    eval_interval: int = 100
    eval_batches: int = 4
    checkpoint_interval: int = 200

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "pad_multiple", "log_interval", "eval_interval",
                     "eval_batches", "checkpoint_interval"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.pack_length >= 0, f"pack_length must be >= 0, got {self.pack_length}")


@dataclass
class LoggingConfig:
    """metrics.jsonl is always written; these add a tracker when its package is installed."""

    wandb: bool = False
    tensorboard: bool = False
    project: str = "tjepa"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        self.masking.check_fits(self.data.block_size)
        length = self.train.pack_length
        check(length == 0 or length >= self.data.block_size,
              f"train.pack_length ({length}) must be 0 (off) or at least data.block_size "
              f"({self.data.block_size}): a document must fit in one packed row")


class TrainingError(Exception):
    """The run cannot go on (a non-finite loss, a bad checkpoint); the message says why."""


# --- configs -------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from a TOML file (default ``configs/default.toml``) and ``section.key=value``
    overrides; every error names the key and the file."""
    path = Path(path) if path else DEFAULT_CONFIG
    table = load_toml(path)
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2:
            raise ConfigError(f"--set {override!r}: expected section.key=value")
        section, name = parts
        table.setdefault(section, {})[name] = _parse_value(raw)
    try:
        return from_dict(RunConfig, table)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string: --set data.dir=data/mine


# --- the loop ------------------------------------------------------------------------------


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train(
    config: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> dict:
    """Train ``config`` into ``run_dir`` (resuming from its ``last.pt`` when ``resume``).

    ``stop_at`` ends the run early at that step with the schedule of ``max_steps`` intact, so it
    can be resumed later. Returns a summary: steps, losses, time, paths.
    """
    run_dir = Path(run_dir)
    world = _init_distributed()
    device = _resolve_device(config.train.device, world)
    bins = _open_bins(config.data, world)
    config = replace(config, model=resolve_model(config, device,
                                                 config.model.vocab_size or bins.vocab_size))
    if config.model.vocab_size < bins.vocab_size:
        raise ConfigError(f"model.vocab_size {config.model.vocab_size} is smaller than the "
                          f"vocabulary of {config.data.dir} ({bins.vocab_size})")
    parts = world.world_size * config.train.grad_accum
    if config.data.batch_size % parts:
        raise ConfigError(f"data.batch_size {config.data.batch_size} must be divisible by "
                          f"ranks x train.grad_accum = {parts}")
    model, optimizer, schedule, sampler, autocast = build_step_parts(config, device)
    loader = data.DocumentLoader(bins.split("train"), config.data.batch_size,
                                 config.data.block_size, config.train.seed,
                                 config.data.min_tokens)
    step, best_val = 0, math.inf
    if resume:
        checkpoint = load_checkpoint(run_dir / "last.pt", device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        sampler.load_state_dict(checkpoint["sampler"])
        step, best_val = checkpoint["step"], checkpoint["best_val_loss"]
        loader.position = checkpoint["loader_position"]
    elif world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(dump_toml(to_dict(config)))
        # the vocabulary travels with the run, so the run folder alone can embed new text
        (run_dir / "vocab.json").write_text(json.dumps(bins.meta))
    network = model
    if world.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    log = MetricsLog(run_dir, config, enabled=world.is_main, resume_step=step if resume else None)
    val_batches = _validation_batches(bins, config)
    held_out = [t.to(device) for t in _held_out_documents(bins, config)]  # moved once
    alarm = CollapseAlarm(config.monitor, config.model.dim)
    end = min(stop_at or config.train.max_steps, config.train.max_steps)
    stream = BatchStream(loader, sampler, lambda batch: step_parts(batch, config, world),
                         pin=device.type == "cuda")
    save = lambda name: _save(run_dir / name, model, optimizer, stream, step, best_val, config,
                              world)
    if world.is_main and not resume:
        log.info(f"{count_parameters(model.context_encoder):,} encoder and "
                 f"{count_parameters(model.predictor):,} predictor parameters on {device}")

    stop = _StopRequest()
    bar = tqdm(total=end, initial=step, desc="train", disable=not (progress and world.is_main),
               dynamic_ncols=True)
    first_bad_step = torch.full((), -1, device=device)  # tracked on the device: no sync per step
    started, losses, rankme = time.perf_counter(), [], float("nan")
    window_tokens, window_start, window_waited = 0, time.perf_counter(), 0.0
    try:
        with stop:
            while step < end and not stop.requested:
                (parts, total_targets), n_tokens = stream.next()
                step_loss = training_step(network, model, optimizer, schedule, step, parts,
                                          total_targets, world, device, autocast,
                                          config.optim.grad_clip)
                first_bad_step = torch.where(
                    ~torch.isfinite(step_loss) & (first_bad_step < 0), step, first_bad_step)
                step += 1
                window_tokens += n_tokens
                bar.update(1)

                is_last = step == end or stop.requested
                monitor_now = step % config.monitor.interval == 0 or is_last
                if step % config.train.log_interval == 0 or monitor_now:
                    _check_finite(first_bad_step, run_dir)
                    loss = _global_mean(step_loss, world)
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                    # the share of the time spent waiting for batches: well above 0, the data
                    # thread sets the pace, not the device
                    data_wait = (stream.waiting_s - window_waited) / max(now - window_start,
                                                                         1e-9)
                    window_tokens, window_start, window_waited = 0, now, stream.waiting_s
                    record = {"step": step, "loss": loss, "lr": schedule.lr(step - 1),
                              "momentum": schedule.momentum(step - 1),
                              "tokens_per_s": round(tokens_per_s, 1),
                              "data_wait": round(data_wait, 4),
                              "elapsed_s": round(now - started, 2)}
                    if step % config.train.eval_interval == 0 or is_last:
                        record["val_loss"] = evaluate(model, val_batches, device, autocast)
                        if record["val_loss"] < best_val:
                            best_val = record["val_loss"]
                            save("best.pt")
                    if monitor_now:
                        record.update(measure(model, *held_out, config.monitor.max_tokens))
                        rankme = record["rankme"]
                        if alarm.check(record, step):
                            record["collapse_alarm"] = True
                            stop.requested |= config.monitor.stop_on_alarm
                    bar.set_postfix(loss=f"{loss:.4f}", rankme=f"{rankme:.1f}",
                                    tok_s=f"{tokens_per_s:,.0f}")
                    losses.append(loss)
                    log.write(record)
                if step % config.train.checkpoint_interval == 0 or is_last or stop.requested:
                    _check_finite(first_bad_step, run_dir)
                    save("last.pt")
    finally:
        stream.close()
        bar.close()
        log.close()
    if stop.requested and world.is_main:
        why = "by the collapse alarm" if alarm.tripped_at is not None else "by a signal"
        log.info(f"stopped at step {step} {why}; resume with: python -m tjepa.train "
                 f"--resume {run_dir}")
    if world.is_main:
        log.figure()
    return {"run_dir": str(run_dir), "step": step, "losses": losses, "best_val_loss": best_val,
            "stopped_early": stop.requested, "collapse_alarm_step": alarm.tripped_at,
            "seconds": time.perf_counter() - started}


def build_step_parts(config: RunConfig, device: torch.device) -> tuple[
        JEPA, torch.optim.Optimizer, Schedule, MaskSampler, contextlib.AbstractContextManager]:
    """What a training step needs — model, optimizer, schedule, mask sampler, autocast — built
    one way for ``train`` and ``tjepa.bench``. ``config.model`` must be resolved (vocabulary,
    attention backend: ``resolve_model``). Compiles the networks in place when the config asks:
    a checkpoint still loads afterwards, the state dict keys are unchanged."""
    use_bf16 = config.train.dtype == "bfloat16" or (
        config.train.dtype == "auto" and device.type == "cuda")
    torch.manual_seed(config.train.seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
    model = JEPA(config.model, config.optim).to(device)
    optimizer = make_optimizer(model, config.optim, fused=device.type == "cuda")
    schedule = Schedule(config.optim, config.train.max_steps)
    sampler = mask_sampler(config)
    for network in (model.context_encoder, model.target_encoder, model.predictor):
        network.transformer.recompute = config.train.recompute_activations
    if config.train.compile:
        compile_networks(model, config.train.compile_scope)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    return model, optimizer, schedule, sampler, autocast


def step_parts(batch: MaskedBatch, config: RunConfig, world: Distributed
               ) -> tuple[list[MaskedBatch | PackedBatch], int]:
    """This rank's micro-batches of a global batch, packed when ``train.pack_length`` asks,
    and the number of targets in the whole global batch. Made on the host, ahead of the step.

    Every rank holds the global batch's masks (index tensors: small), so it knows the global
    number of targets and normalizes by it: gradients equal one process on the whole batch.
    """
    accum = config.train.grad_accum
    parts = [batch.part(world.rank * accum + micro, world.world_size * accum)
             for micro in range(accum)]
    if config.train.pack_length:
        parts = [pack(part, config.train.pack_length) for part in parts]
    return parts, int(batch.target_valid.sum())


def training_step(network, model: JEPA, optimizer, schedule: Schedule, step: int,
                  parts: list[MaskedBatch | PackedBatch], total_targets: int, world: Distributed,
                  device, autocast, grad_clip: float) -> torch.Tensor:
    """One step as ``train`` and ``tjepa.bench`` run it: the schedule's learning rate and
    weight decay, forward and backward over this rank's micro-batches (``step_parts``), clip,
    optimizer step, EMA update. Returns the mean loss over the whole global batch (this rank's
    part of it; ``_global_mean`` adds the rest).

    Nothing here waits for the device — no ``.item()``, no boolean indexing, no pageable
    copies — so the host queues the next step while the card runs this one; a test audits it.
    """
    schedule.apply(optimizer, step)
    n_parts = world.world_size * len(parts)
    step_loss = torch.zeros((), device=device)
    for micro, part in enumerate(parts):
        part = part.to(device, non_blocking=True)
        sync = micro == len(parts) - 1 or world.world_size == 1
        with nullcontext() if sync else network.no_sync():  # all-reduce once, at the end
            with autocast:
                loss_sum, _, regularizer = network(part)
            loss = loss_sum / max(total_targets, 1)
            # the regularizer is a mean over each part: average it over all parts
            regularized = loss + regularizer / n_parts
            (regularized * world.world_size).backward()  # DDP averages over ranks; undo it
        step_loss += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_target(schedule.momentum(step))
    return step_loss


@torch.no_grad()
def evaluate(model: JEPA, batches: list[MaskedBatch | PackedBatch], device,
             autocast=None) -> float:
    """Mean loss over fixed validation batches."""
    autocast = autocast or nullcontext()
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    for batch in batches:
        with autocast:
            loss_sum, n, _ = model(batch.to(device))
        total += loss_sum.float()
        count += n
    return float(total / count.clamp(min=1))


def mask_sampler(config: RunConfig, seed_offset: int = 0) -> MaskSampler:
    """The run's mask sampler: its mixture and views, its seed (+ ``seed_offset`` for a stream
    of its own), widths rounded as ``train.pad_multiple`` asks."""
    return MaskSampler(config.masking, seed=config.train.seed + seed_offset,
                       pad_multiple=config.train.pad_multiple)


def _validation_batches(bins: data.TokenBins, config: RunConfig
                        ) -> list[MaskedBatch | PackedBatch]:
    """The same validation batches at every evaluation, from a seed of their own (laid out as
    the training batches are, so a compiled run sees the shapes it already knows)."""
    loader = _validation_loader(bins, config, config.data.batch_size)
    sampler = mask_sampler(config, seed_offset=1)
    batches = [sampler(*loader.next_batch()) for _ in range(config.train.eval_batches)]
    if config.train.pack_length:
        batches = [pack(batch, config.train.pack_length) for batch in batches]
    return batches


def resolve_model(config: RunConfig, device: torch.device, vocab_size: int) -> ModelConfig:
    """The model config as it will run: the vocabulary of the bins, and SDPA where flex would
    not pay (uncompiled flex_attention materializes the scores; on the CPU it has no backward).
    """
    attention = config.model.attention
    if attention == "flex" and not (config.train.compile and device.type == "cuda"):
        attention = "sdpa"
    return replace(config.model, vocab_size=vocab_size, attention=attention)


def compile_networks(model: JEPA, scope: Literal["block", "network"] = "block") -> None:
    """torch.compile the networks in place (state dict keys unchanged).

    ``block``, regional compilation: the blocks share one compiled graph (the weights are its
    inputs), so the compiler works on one block per shape and grad mode, not on a whole
    network, and so does each recompile (on a 2-core CPU, 24-30 s instead of 44-50 s for the
    default config). ``network``: each network whole, which can fuse across blocks. Padded
    widths come in a handful of buckets (``train.pad_multiple``); packed rows are
    ``pack_length`` wide and only their number varies, which the compiler turns into a
    dynamic size after the first change.
    """
    # One graph serves every variant: encoder and predictor widths, grad on and off (target
    # encoder, evaluation), trainable and frozen weights, padded and packed shapes. That is
    # more than dynamo's default of 8 recompiles before it falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    for network in (model.context_encoder, model.target_encoder, model.predictor):
        if scope == "network":
            network.compile()
        else:
            for block in network.transformer.blocks:
                block.compile()
    if scope == "network":  # the packed predictor is a second entry point of the same weights
        model.predictor.forward_packed = torch.compile(model.predictor.forward_packed)


def _held_out_documents(bins: data.TokenBins, config: RunConfig):
    """A fixed batch of validation documents for the collapse metrics: tokens, lengths."""
    return _validation_loader(bins, config, config.monitor.documents).next_batch()


def _validation_loader(bins: data.TokenBins, config: RunConfig,
                       batch_size: int) -> data.DocumentLoader:
    split = bins.split("val")
    return data.DocumentLoader(split, min(batch_size, len(split)), config.data.block_size,
                               seed=config.train.seed, min_tokens=config.data.min_tokens)


def _check_finite(first_bad_step: torch.Tensor, run_dir: Path) -> None:
    bad = int(first_bad_step)
    if bad >= 0:
        last = run_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
        raise TrainingError(f"the loss is not finite at step {bad + 1}; stopping ({kept})")


def _global_mean(step_loss: torch.Tensor, world: Distributed) -> float:
    if world.world_size > 1:
        step_loss = step_loss.clone()
        dist.all_reduce(step_loss)
    return float(step_loss)


class BatchStream:
    """Batches made ahead in a background thread — drawn, masked, split into this rank's parts
    (``prepare``), pinned — so that work overlaps the device's. The state it reports (loader
    position, sampler generator) is that of the last batch handed out, not of the ones made
    ahead: checkpoints resume exactly. ``making_s`` and ``waiting_s`` say whether the thread
    keeps ahead: seconds spent making the ``made`` batches, and seconds ``next`` waited."""

    def __init__(self, loader: data.DocumentLoader, sampler: MaskSampler,
                 prepare: Callable[[MaskedBatch], tuple[list, int]], pin: bool = False,
                 ahead: int = 2):
        self.loader, self.sampler, self.prepare, self.pin = loader, sampler, prepare, pin
        self.loader_position, self.sampler_state = loader.position, sampler.state_dict()
        self.made, self.making_s, self.waiting_s = 0, 0.0, 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                tokens, lengths = self.loader.next_batch()
                parts, total_targets = self.prepare(self.sampler(tokens, lengths))
                if self.pin:
                    parts = [part.pin_memory() for part in parts]
                self.made, self.making_s = self.made + 1, self.making_s + (
                    time.perf_counter() - started)
                item = ((parts, total_targets), int(lengths.sum()), self.loader.position,
                        self.sampler.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaces in next(), on the training thread
            self._queue.put(e)

    def next(self) -> tuple[tuple[list, int], int]:
        """The next batch as ``prepare`` made it, and its number of input tokens."""
        if self._stop.is_set():
            raise RuntimeError("the batch stream is closed")
        started = time.perf_counter()
        item = self._queue.get()
        self.waiting_s += time.perf_counter() - started
        if isinstance(item, BaseException):
            raise item
        batch, n_tokens, self.loader_position, self.sampler_state = item
        return batch, n_tokens

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- checkpoints ---------------------------------------------------------------------------


def _save(path: Path, model, optimizer, stream, step, best_val, config, world) -> None:
    if not world.is_main:
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sampler": stream.sampler_state,
        "loader_position": stream.loader_position,
        "step": step,
        "best_val_loss": best_val,
        "config": to_dict(config),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint whole


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A tjepa checkpoint, loaded with ``weights_only=True``; a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint there (nothing to resume)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise TrainingError(f"{path}: truncated or not a checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a tjepa checkpoint (expected format "
                            f"{CHECKPOINT_FORMAT!r})")
    return state


# --- logging -------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (always), plus Weights & Biases or TensorBoard when asked for and present."""

    def __init__(self, run_dir: Path, config: RunConfig, enabled: bool = True,
                 resume_step: int | None = None):
        self.run_dir, self.enabled, self.trackers = run_dir, enabled, []
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Lines past the checkpoint were logged by the interrupted run: they will be redone.
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = self.path.open("a" if resume_step is not None else "w")
        if config.logging.wandb:
            self._add_tracker("wandb", lambda m: m.init(project=config.logging.project,
                                                        config=to_dict(config), dir=run_dir))
        if config.logging.tensorboard:
            self._add_tracker("torch.utils.tensorboard",
                              lambda m: m.SummaryWriter(log_dir=str(run_dir / "tensorboard")))

    def _add_tracker(self, module: str, start) -> None:
        import importlib

        try:
            self.trackers.append(start(importlib.import_module(module)))
        except ImportError:
            warnings.warn(f"{module} is not installed: logging to metrics.jsonl only", stacklevel=3)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for tracker in self.trackers:
            values = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            if hasattr(tracker, "log"):
                tracker.log(values, step=record["step"])
            else:
                for key, value in values.items():
                    tracker.add_scalar(key, value, record["step"])

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message, file=sys.stderr)

    def figure(self) -> None:
        from tjepa import plot

        fig = plot.training_figure(read_metrics(self.run_dir))
        fig.savefig(self.run_dir / "loss.png", dpi=110)
        plot.plt.close(fig)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            for tracker in self.trackers:
                getattr(tracker, "finish", getattr(tracker, "close", lambda: None))()


def throughput(records: list[dict]) -> tuple[float, float]:
    """Median input tokens/s of a run's logged windows, and the median share of their time
    spent waiting for batches; the first window (compiling, the first batches) is left out
    when there are others. NaN for a run that logged nothing."""
    windows = [r for r in records if "tokens_per_s" in r]
    windows = windows[1:] or windows
    if not windows:
        return math.nan, math.nan
    median = lambda values: float(statistics.median(values))
    return (median(r["tokens_per_s"] for r in windows),
            median(r.get("data_wait", math.nan) for r in windows))


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# --- helpers -------------------------------------------------------------------------------


class _StopRequest:
    """SIGTERM and the first Ctrl-C ask the loop to stop after the current step and save."""

    def __init__(self):
        self.requested, self._previous = False, {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            # outside the main thread (a notebook worker) there are no handlers to install
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _init_distributed() -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(name: str, world: Distributed) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        device = torch.device("cuda", world.local_rank if world.world_size > 1 else
                              (device.index or 0))
        torch.cuda.set_device(device)
    return device


def _open_bins(config: DataConfig, world: Distributed) -> data.TokenBins:
    path = Path(config.dir)
    if not path.exists() and config.source:
        if world.is_main:
            tqdm.write(f"preparing {config.source} into {path} (once)", file=sys.stderr)
            data.prepare(config.source, path)
        if world.world_size > 1:
            dist.barrier()
    return data.TokenBins(path)


def default_run_dir(config_path: str | Path | None) -> Path:
    name = Path(config_path).stem if config_path else "default"
    return Path("out") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"TOML config (default {DEFAULT_CONFIG.name})")
    parser.add_argument("--data", help="token bins folder (sets data.dir)")
    parser.add_argument("--out", help="run folder (default out/<config>-<time>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    parser.add_argument("--max-steps", type=int, help="length of the run (sets train.max_steps)")
    parser.add_argument("--stop-at", type=int,
                        help="stop after this step, keeping the schedule (resume later)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (sets train.device)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4")
    args = parser.parse_args(argv)

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data.dir={json.dumps(args.data)}")
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.device:
        overrides.append(f"train.device={json.dumps(args.device)}")
    try:
        if args.resume:
            run_dir = Path(args.resume)
            config = load_config(run_dir / "config.toml", overrides)
        else:
            config = load_config(args.config, overrides)
            run_dir = Path(args.out) if args.out else default_run_dir(args.config)
            if (run_dir / "last.pt").exists():
                raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} to "
                                  "continue it, or another --out")
        summary = train(config, run_dir, resume=bool(args.resume), stop_at=args.stop_at)
    except (ConfigError, data.DataError, TrainingError) as e:
        print(f"tjepa.train: error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary["losses"]:
        best = summary["best_val_loss"]
        print(f"run {summary['run_dir']}: step {summary['step']}, loss "
              f"{summary['losses'][0]:.4f} → {summary['losses'][-1]:.4f}"
              + (f", best val {best:.4f}" if math.isfinite(best) else "")
              + f", {summary['seconds']:.0f} s")
        tokens_per_s, data_wait = throughput(read_metrics(summary["run_dir"]))
        print(f"median {tokens_per_s:,.0f} input tokens/s, waiting for batches "
              f"{data_wait:.1%} of the time; probe it: python -m tjepa.eval "
              f"{summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
