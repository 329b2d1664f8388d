"""Where a training run's time goes: each part of the step, then the run's other work.

    python -m tjepa.lab.breakdown [--config C] [--steps N] [--set S.K=V] \
        [--readme docs/performance.md --marker step-breakdown]

The config's own data, model and step (``tjepa.step.TrainingStep``) run as in training, with
timers on the step's parts: hooks before and after each network's forward and backward, and
around the regularizer, the gradient clip, the optimizer and the EMA update. What lies between
two timers is named for what runs there (the loss after the networks' forward; the loss's and
the regularizer's backward before the predictor's). Gradients flow from the predictor into the
context encoder, so each network's backward is timed from the moment its outputs' gradients
are ready.

Then one validation pass, one collapse measurement (the monitor) and one checkpoint are
timed, and multiplied by how often the config runs them, for each one's share of a whole
run. On a CUDA device every timer synchronizes first, which slows the step it times: read the
shares, not the total.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tjepa import data, runs
from tjepa.batches import held_out_documents, mask_sampler, validation_batches
from tjepa.monitor import measure
from tjepa.step import Distributed, TrainingStep, resolve_device
from tjepa.tables import command_line, markdown_table, write_readme_table
from tjepa.train import open_bins, resolve_config

# The step's parts, in the order they run; each is a span between two of the timers' marks.
PARTS = {
    "setup": "schedule, batch to the device",
    "target encoder forward": "whole documents, no gradient",
    "context encoder forward": "context tokens only",
    "predictor forward": "context plus mask tokens",
    "regularizer forward": "the anti-collapse term on the context embeddings",
    "loss forward": "gathers, smooth L1 over the targets, the rest of the forward",
    "loss and regularizer backward": "up to the predictor's outputs, and the regularizer's",
    "predictor backward": "",
    "context encoder backward": "down to the token embeddings, to the end of backward()",
    "gradient clip": "",
    "optimizer": "AdamW, then zero_grad",
    "EMA update": "target ← momentum · target + (1 − momentum) · context",
}


class StepTimer:
    """Marks the times at which the step's parts begin and end (``marks``, in order), through
    module hooks and wrappers installed on one ``TrainingStep``; ``remove`` undoes them all."""

    def __init__(self, training_step: TrainingStep):
        self.marks: list[tuple[str, float]] = []
        self._undo: list[Callable[[], None]] = []
        cuda = training_step.device.type == "cuda"
        self._sync = (lambda: torch.cuda.synchronize(training_step.device)) if cuda else None
        model = training_step.model
        names = {"model": model, "target": model.target_encoder,
                 "context": model.context_encoder, "predictor": model.predictor}
        for name, module in names.items():
            self._hook(module.register_forward_pre_hook(self._marker(f"{name}>")))
            self._hook(module.register_forward_hook(self._marker(f"{name}<")))
        for name in ("context", "predictor"):
            module = names[name]
            self._hook(module.register_full_backward_pre_hook(self._marker(f"{name} grad>")))
            self._hook(module.register_full_backward_hook(self._marker(f"{name} grad<")))
        self._wrap(model, "regularizer", "regularizer")
        self._wrap(training_step.optimizer, "step", "optimizer")
        self._wrap(training_step.optimizer, "zero_grad", "zero_grad")
        self._wrap(model, "update_target", "ema")
        self._wrap(torch.nn.utils, "clip_grad_norm_", "clip")

    def mark(self, name: str) -> None:
        if self._sync:
            self._sync()
        self.marks.append((name, time.perf_counter()))

    def _marker(self, name: str) -> Callable:
        def hook(*_):
            self.mark(name)
        return hook

    def _hook(self, handle) -> None:
        self._undo.append(handle.remove)

    def _wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            self.mark(f"{name}>")
            result = original(*args, **kwargs)
            self.mark(f"{name}<")
            return result

        setattr(owner, attribute, timed)
        if owner is torch.nn.utils:
            self._undo.append(lambda: setattr(owner, attribute, original))
        else:  # an instance attribute over the class's method: deleting it restores the method
            self._undo.append(lambda: delattr(owner, attribute))

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def step_parts(marks: list[tuple[str, float]], start: float, end: float) -> dict[str, float]:
    """Seconds in each of ``PARTS`` for one step whose marks are ``marks`` (between ``start``
    and ``end``). Micro-batches repeat the forward and backward marks; their spans add up."""
    spans: dict[str, float] = defaultdict(float)  # name> … name< pairs, summed
    opened: dict[str, float] = {}
    for name, t in marks:
        if name.endswith(">"):
            opened[name[:-1]] = t
        elif name[:-1] in opened:
            spans[name[:-1]] += t - opened.pop(name[:-1])

    parts = dict.fromkeys(PARTS, 0.0)
    parts["setup"] = _first(marks, "model>") - start
    parts["target encoder forward"] = spans["target"]
    parts["context encoder forward"] = spans["context"]
    parts["predictor forward"] = spans["predictor"]
    parts["regularizer forward"] = spans["regularizer"]
    parts["loss forward"] = spans["model"] - (spans["target"] + spans["context"]
                                              + spans["predictor"] + spans["regularizer"])
    # backward, per micro-batch: model< … predictor grad> … predictor grad< … context grad> …
    # then the next micro-batch's model> or, after the last one, the clip or the optimizer
    backward_end = _first(marks, "clip>", default=_first(marks, "optimizer>"))
    for i, (name, t_forward_end) in enumerate(marks):
        if name != "model<":
            continue
        rest = marks[i + 1:]
        predictor_in = _first(rest, "predictor grad>")
        predictor_out = _first(rest, "predictor grad<")
        context_in = _first(rest, "context grad>")
        next_forward = _first(rest, "model>", default=backward_end)
        parts["loss and regularizer backward"] += ((predictor_in - t_forward_end)
                                                   + (context_in - predictor_out))
        parts["predictor backward"] += predictor_out - predictor_in
        parts["context encoder backward"] += next_forward - context_in
    parts["gradient clip"] = spans["clip"]
    parts["optimizer"] = spans["optimizer"] + spans["zero_grad"]
    parts["EMA update"] = spans["ema"]
    parts["other"] = (end - start) - sum(parts.values())
    return parts


def _first(marks: list[tuple[str, float]], name: str, default: float | None = None) -> float:
    for mark, t in marks:
        if mark == name:
            return t
    if default is None:
        raise ValueError(f"no {name!r} mark in the step: is the timer installed on its model?")
    return default


def _median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def breakdown(config_path: str | None = None, steps: int = 30, warmup: int = 5,
              overrides: list[str] | None = None, repeats: int = 3,
              progress: bool = True) -> dict:
    """Time the config's step part by part over ``steps`` steps (after ``warmup``) on its own
    data, then its validation pass, collapse measurement and checkpoint (median of
    ``repeats``). Returns ``{"parts": {part: ms per step}, "step_ms", "events": {…}, "run":
    {…}}`` where ``run`` projects each kind of work over the config's ``max_steps``."""
    config = runs.load_config(config_path, overrides or [])
    world = Distributed()
    device = resolve_device(config.train.device, world)
    bins = open_bins(config.data, world)
    config = resolve_config(config, bins, device, world)
    loader = data.DocumentLoader(bins.split("train"), config.data.batch_size,
                                 config.data.block_size, config.train.seed,
                                 config.data.min_tokens)
    sampler = mask_sampler(config)
    training_step = TrainingStep(config, device, world)
    if len(training_step.model.networks()) != 3:
        # one encoder serving as both would have its two passes timed under one name
        raise ValueError("the breakdown times a JEPA's three networks apart: it needs a "
                         "context encoder, an EMA target encoder (anti_collapse ema or vicreg) "
                         "and a predictor (the taught JEPA)")
    batches = [training_step.split(sampler(*loader.next_batch()))
               for _ in range(warmup + steps)]  # made ahead: the data's time is not the step's
    for i in tqdm(range(warmup), desc="warm-up", leave=False, disable=not progress):
        training_step(i, batches[i])
    timer = StepTimer(training_step)
    per_step = []
    try:
        with warnings.catch_warnings():
            # the context encoder's inputs are token ids, so its backward hook fires at its
            # outputs: where its backward starts (the next mark ends it)
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for i in tqdm(range(warmup, warmup + steps), desc="timed steps", leave=False,
                          disable=not progress):
                timer.marks.clear()
                timer.mark("step>")
                training_step(i, batches[i])
                timer.mark("step<")
                start, end = timer.marks[0][1], timer.marks[-1][1]
                per_step.append(step_parts(timer.marks[1:-1], start, end))
    finally:
        timer.remove()
    # means, not medians: the parts then add up to the step
    parts_ms = {part: 1000 * statistics.mean(s[part] for s in per_step) for part in per_step[0]}
    step_s = sum(parts_ms.values()) / 1000

    val_batches = validation_batches(bins, config)
    held_out = [t.to(device) for t in held_out_documents(bins, config)]
    with tempfile.TemporaryDirectory() as folder:
        events = {
            "validation": _median_seconds(lambda: training_step.validation_loss(val_batches),
                                          repeats),
            "monitor": _median_seconds(lambda: measure(training_step.model, *held_out,
                                                       config.monitor.max_tokens), repeats),
            "checkpoint": _median_seconds(lambda: runs.save_checkpoint(
                Path(folder) / "last.pt", training_step.state_dict()), repeats),
        }
    n = config.train.max_steps
    counts = {"validation": n // config.train.eval_interval,
              "monitor": n // config.monitor.interval,
              "checkpoint": n // config.train.checkpoint_interval
              + n // config.train.eval_interval}  # last.pt, and best.pt at most every eval
    run = {"steps": n * step_s, **{k: counts[k] * events[k] for k in events}}
    return {"config": str(config_path or "configs/default.toml"), "device": str(device),
            "threads": torch.get_num_threads(), "steps_timed": steps, "max_steps": n,
            "step_ms": 1000 * step_s, "parts": parts_ms,
            "events": {k: {"seconds": events[k], "count": counts[k]} for k in events},
            "run": run}


def breakdown_tables(result: dict) -> str:
    """The step's parts (ms per step, share) and the run's work (seconds, share), as Markdown."""
    step_ms = sum(result["parts"].values())
    step_rows = [[part, PARTS.get(part, "timer overhead, Python between the parts"),
                  f"{ms:.1f}", f"{100 * ms / step_ms:.0f} %"]
                 for part, ms in result["parts"].items()]
    step_rows.append(["**the step**", "", f"**{step_ms:.1f}**", "100 %"])
    run_total = sum(result["run"].values())
    run_rows = []
    for kind, seconds in result["run"].items():
        if kind == "steps":
            how = f"{result['max_steps']} steps × {result['step_ms']:.0f} ms"
        else:
            event = result["events"][kind]
            how = f"{event['count']} × {1000 * event['seconds']:.0f} ms"
        run_rows.append([kind, how, f"{seconds:.0f}", f"{100 * seconds / run_total:.0f} %"])
    run_rows.append(["**the run**", "", f"**{run_total:.0f}**", "100 %"])
    return "\n\n".join([
        f"{result['config']} on {result['device']} ({result['threads']} threads), the mean of "
        f"{result['steps_timed']} steps:",
        markdown_table(["part of the step", "what runs", "ms", "share"], step_rows),
        "The whole run, projected from the step and one timed event of each kind:",
        markdown_table(["work", "how much", "seconds", "share"], run_rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.breakdown", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML config (default configs/default.toml)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--readme", help="write the tables between this file's markers")
    parser.add_argument("--marker", default="step-breakdown")
    args = parser.parse_args(argv)
    try:
        result = breakdown(args.config, args.steps, args.warmup, args.set)
    except ValueError as error:
        parser.error(str(error))
    tables = breakdown_tables(result)
    print(tables)
    if args.readme:
        write_readme_table(args.readme, args.marker, tables, command_line("tjepa.lab.breakdown",
                                                                          argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
