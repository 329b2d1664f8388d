"""Train a text JEPA: config → data → model → loop → save.

    python -m tjepa.train                                   # tinytales, default config, CPU/GPU
    python -m tjepa.train --config configs/tinystories.toml --data data/tinystories
    python -m tjepa.train --resume out/default-20260101-120000
    torchrun --nproc_per_node=4 -m tjepa.train --config configs/tinystories.toml

The run folder (``tjepa.runs``) gets the resolved config, the metrics, ``last.pt`` and
``best.pt`` (lowest validation loss), ``step-N.pt`` for each step ``train.keep_steps`` names,
and ``loss.png``. SIGTERM and Ctrl-C save ``last.pt`` and
exit cleanly; ``--resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tjepa import data, runs
from tjepa.batches import BatchStream, held_out_documents, mask_sampler, validation_batches
from tjepa.config import ConfigError, to_dict
from tjepa.model import count_parameters
from tjepa.monitor import CollapseAlarm, measure
from tjepa.step import (
    Distributed,
    TrainingStep,
    global_mean,
    init_distributed,
    resolve_device,
    resolve_model,
)


def train(config: runs.RunConfig, run_dir: str | Path, resume: bool = False,
          stop_at: int | None = None, progress: bool = True) -> dict:
    """Train ``config`` into ``run_dir`` (resuming from its ``last.pt`` when ``resume``).

    ``stop_at`` ends the run early at that step with the schedule of ``max_steps`` intact, so it
    can be resumed later. Returns a summary: steps, losses, time, paths.
    """
    # --- config: where it runs, and what the data fixes (the vocabulary)
    run_dir = Path(run_dir)
    world = init_distributed()
    device = resolve_device(config.train.device, world)
    bins = open_bins(config.data, world)
    config = resolve_config(config, bins, device, world)

    # --- data: documents in a seeded order; fixed batches for validation and the monitor
    loader = data.DocumentLoader(bins.split("train"), config.data.batch_size,
                                 config.data.block_size, config.train.seed,
                                 config.data.min_tokens)
    sampler = mask_sampler(config)
    val_batches = validation_batches(bins, config)
    held_out = [t.to(device) for t in held_out_documents(bins, config)]

    # --- model: the networks, optimizer and schedule, as one step to call
    training_step = TrainingStep(config, device, world)
    step, best_val = 0, math.inf
    if resume:
        state = runs.load_checkpoint(run_dir / "last.pt", device)
        training_step.load_state_dict(state)
        sampler.load_state_dict(state["sampler"])
        step, best_val, loader.position = (state["step"], state["best_val_loss"],
                                           state["loader_position"])
    if world.is_main:  # on resume too: config.toml records what the run now runs with
        runs.start_run_folder(run_dir, config, bins.meta)
    log = runs.MetricsLog(run_dir, config, enabled=world.is_main,
                          resume_step=step if resume else None)
    if world.is_main and not resume:
        model = training_step.model
        encoder = count_parameters(model.context_encoder)
        rest = sum(p.numel() for p in model.parameters() if p.requires_grad) - encoder
        parts = [name for name, m in model.named_children() if not name.endswith("encoder")
                 and any(p.requires_grad for p in m.parameters())]
        log.info(f"{encoder:,} encoder and {rest:,} {' and '.join(parts)} parameters on "
                 f"{device}")

    # --- the loop: batch → step → (now and then) log, validate, monitor → save
    end = min(stop_at or config.train.max_steps, config.train.max_steps)
    stream = BatchStream(loader, sampler, training_step.split, pin=device.type == "cuda")

    def save(name: str) -> None:
        if world.is_main:
            runs.save_checkpoint(run_dir / name, {
                **training_step.state_dict(), **stream.state_dict(), "step": step,
                "best_val_loss": best_val, "config": to_dict(config)})

    history = [r for r in runs.read_metrics(run_dir) if r["step"] <= step] if resume else []
    alarm = CollapseAlarm(config.monitor, config.model.dim, history)  # peaks survive a resume
    window = Window(stream)  # tokens/s and time waiting for batches, between log lines
    stop = StopRequest()
    bar = tqdm(total=end, initial=step, desc="train", disable=not (progress and world.is_main),
               dynamic_ncols=True)
    first_bad_step = torch.full((), -1, device=device)  # kept on the device: no sync per step
    losses, rankme = [], float("nan")
    try:
        with stop:
            while step < end and not stop.requested:
                batch = stream.next()
                step_loss = training_step(step, batch)
                first_bad_step = torch.where(
                    ~torch.isfinite(step_loss) & (first_bad_step < 0), step, first_bad_step)
                step += 1
                window.tokens += batch.input_tokens
                bar.update(1)

                is_last = step == end or stop.requested
                monitor_now = step % config.monitor.interval == 0 or is_last
                if step % config.train.log_interval == 0 or monitor_now:
                    check_finite(first_bad_step, run_dir)
                    loss = global_mean(step_loss, world)
                    record = {"step": step, "loss": loss,
                              "lr": training_step.schedule.lr(step - 1),
                              "momentum": training_step.schedule.momentum(step - 1),
                              **window.lap()}
                    with training_step.measuring():  # the step's generators untouched
                        if step % config.train.eval_interval == 0 or is_last:
                            record.update(training_step.validation_loss(val_batches))
                        if monitor_now:
                            record.update(measure(training_step.model, *held_out,
                                                  config.monitor.max_tokens))
                    if record.get("val_loss", math.inf) < best_val:
                        best_val = record["val_loss"]
                        save("best.pt")
                    if monitor_now:
                        rankme = record["rankme"]
                        if alarm.check(record, step):
                            record["collapse_alarm"] = True
                            stop.requested |= config.monitor.stop_on_alarm
                    bar.set_postfix(loss=f"{loss:.4f}", rankme=f"{rankme:.1f}",
                                    tok_s=f"{record['tokens_per_s']:,.0f}")
                    losses.append(loss)
                    log.write(record)
                if step % config.train.checkpoint_interval == 0 or is_last or stop.requested:
                    check_finite(first_bad_step, run_dir)
                    save("last.pt")
                if step in config.train.keep_steps:
                    check_finite(first_bad_step, run_dir)
                    save(f"step-{step}.pt")
    finally:
        stream.close()
        bar.close()
        log.close()

    # --- the end: say why it stopped, draw the curves
    if stop.requested and world.is_main:
        why = "by the collapse alarm" if alarm.tripped_at is not None else "by a signal"
        log.info(f"stopped at step {step} {why}; resume with: python -m tjepa.train "
                 f"--resume {run_dir}")
    if world.is_main:
        log.figure()
    return {"run_dir": str(run_dir), "step": step, "losses": losses, "best_val_loss": best_val,
            "stopped_early": stop.requested, "collapse_alarm_step": alarm.tripped_at,
            "seconds": window.elapsed()}


# --- what the story calls ------------------------------------------------------------------


def open_bins(config: data.DataConfig, world: Distributed) -> data.TokenBins:
    """The run's token bins, prepared from ``data.source`` first when they are missing."""
    path = Path(config.dir)
    if not path.exists() and config.source:
        if world.is_main:
            tqdm.write(f"preparing {config.source} into {path} (once)", file=sys.stderr)
            data.prepare(config.source, path)
        if world.world_size > 1:
            dist.barrier()
    return data.TokenBins(path)


def resolve_config(config: runs.RunConfig, bins: data.TokenBins, device: torch.device,
                   world: Distributed) -> runs.RunConfig:
    """The config as it will run: the bins' vocabulary and the attention backend resolved,
    and the batch checked to split over the ranks and micro-batches."""
    config = replace(config, model=resolve_model(config, device,
                                                 config.model.vocab_size or bins.vocab_size))
    if config.model.vocab_size < bins.vocab_size:
        raise ConfigError(f"model.vocab_size {config.model.vocab_size} is smaller than the "
                          f"vocabulary of {config.data.dir} ({bins.vocab_size})")
    parts = world.world_size * config.train.grad_accum
    if config.data.batch_size % parts:
        raise ConfigError(f"data.batch_size {config.data.batch_size} must be divisible by "
                          f"ranks x train.grad_accum = {parts}")
    return config


class Window:
    """The steps since the last log line: input tokens per second, and the share of the wall
    time spent waiting for batches (well above 0: the data thread sets the pace, not the
    device)."""

    def __init__(self, stream: BatchStream):
        self.stream, self.tokens = stream, 0
        self.run_start = self.lap_start = time.perf_counter()
        self.waited = stream.waiting_s

    def lap(self) -> dict:
        """The window's figures for the log record; the next window starts now."""
        now = time.perf_counter()
        seconds = max(now - self.lap_start, 1e-9)
        record = {"tokens_per_s": round(self.tokens / seconds, 1),
                  "data_wait": round((self.stream.waiting_s - self.waited) / seconds, 4),
                  "elapsed_s": round(now - self.run_start, 2)}
        self.tokens, self.lap_start, self.waited = 0, now, self.stream.waiting_s
        return record

    def elapsed(self) -> float:
        return time.perf_counter() - self.run_start


def check_finite(first_bad_step: torch.Tensor, run_dir: Path) -> None:
    bad = int(first_bad_step)
    if bad >= 0:
        last = run_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
        raise runs.RunError(f"the loss is not finite at step {bad + 1}; stopping ({kept})")


class StopRequest:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"TOML config (default {runs.DEFAULT_CONFIG.name})")
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
            config = runs.resume_config(run_dir, overrides)
        else:
            config = runs.load_config(args.config, overrides)
            run_dir = Path(args.out) if args.out else runs.default_run_dir(args.config)
            if (run_dir / "last.pt").exists():
                raise ConfigError(f"{run_dir} already holds a run; pass --resume {run_dir} to "
                                  "continue it, or another --out")
        summary = train(config, run_dir, resume=bool(args.resume), stop_at=args.stop_at)
    except (ConfigError, data.DataError, runs.RunError) as e:
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
        tokens_per_s, data_wait = runs.throughput(runs.read_metrics(summary["run_dir"]))
        print(f"median {tokens_per_s:,.0f} input tokens/s, waiting for batches "
              f"{data_wait:.1%} of the time; probe it: python -m tjepa.eval "
              f"{summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
