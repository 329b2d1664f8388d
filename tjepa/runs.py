"""A run: its config, and the folder that holds everything it made.

    out/<run>/config.toml     the resolved RunConfig: enough to resume or evaluate the run
    out/<run>/vocab.json      the bins' vocabulary, so the folder alone can embed new text
    out/<run>/metrics.jsonl   one JSON object per logged step
    out/<run>/last.pt         the latest checkpoint (model, optimizer, sampler, loader position)
    out/<run>/best.pt         the checkpoint of the lowest validation loss
    out/<run>/step-N.pt       the checkpoint at step N, for each N of train.keep_steps
    out/<run>/loss.png        the training curves

``tjepa.train`` writes a run folder; ``tjepa.eval`` and ``tjepa.embed`` read one back
(``load_run``, ``embed_texts``) without importing the training script.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from tjepa import data, variants
from tjepa.config import CONFIG_DIR, ConfigError, check, dump_toml, from_dict, load_toml, to_dict
from tjepa.data import DataConfig
from tjepa.masking import MaskingConfig
from tjepa.model import Learner, ModelConfig
from tjepa.monitor import MonitorConfig
from tjepa.objective import ObjectiveConfig
from tjepa.optim import OptimConfig
from tjepa.probe import pad, pooled
from tjepa.variants import build_model

DEFAULT_CONFIG = CONFIG_DIR / "default.toml"
CHECKPOINT_FORMAT = "tjepa-checkpoint-1"


@dataclass
class TrainConfig:
    max_steps: int = 1000  # also the length of the LR, weight-decay and momentum schedules
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False
    # what torch.compile sees: "block" (one graph shared by all blocks: compiles faster) or
    # "network" (each whole network: fuses across blocks, compiles longer)
    compile_scope: Literal["block", "network"] = "block"
    pad_multiple: int = 1  # round padded widths up to this (128 with compile: few shapes)
    # > 0: lay every pass out in rows of this many slots, sequences end to end, no padding
    # (tjepa.packing); at least data.block_size. 0: one padded row per document or view.
    pack_length: int = 0
    grad_accum: int = 1
    # recompute each block's activations in the backward instead of storing them: a fraction
    # of the activation memory for more compute in the networks that learn
    recompute_activations: bool = False
    log_interval: int = 10
    eval_interval: int = 100
    eval_batches: int = 4
    checkpoint_interval: int = 200
    # steps whose checkpoint is also kept as step-N.pt (a learning curve: eval --checkpoint)
    keep_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "pad_multiple", "log_interval", "eval_interval",
                     "eval_batches", "checkpoint_interval"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.pack_length >= 0, f"pack_length must be >= 0, got {self.pack_length}")
        check(all(1 <= s <= self.max_steps for s in self.keep_steps),
              f"keep_steps must lie between 1 and max_steps ({self.max_steps}), got "
              f"{self.keep_steps}")


@dataclass
class LoggingConfig:
    """metrics.jsonl is always written; these add a tracker when its package is installed."""

    wandb: bool = False
    tensorboard: bool = False
    project: str = "tjepa"


@dataclass
class RunConfig:
    """Everything a run needs, one section per concern, each validated where it is defined."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        self.masking.check_fits(self.data.block_size)
        length = self.train.pack_length
        check(self.objective.name == "jepa" or length == 0,
              f"objective.name = {self.objective.name!r} takes padded batches: set "
              f"train.pack_length = 0 (it is {length})")
        check(length == 0 or length >= self.data.block_size,
              f"train.pack_length ({length}) must be 0 (off) or at least data.block_size "
              f"({self.data.block_size}): a document must fit in one packed row")
        variants.check(self)


class RunError(Exception):
    """A run cannot go on or cannot be read (a non-finite loss, a bad checkpoint, a folder that
    is not a run); the message says why."""


# --- config --------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from a TOML file (default ``configs/default.toml``) and ``section.key=value``
    overrides; every error names the key and the file."""
    path = Path(path) if path else DEFAULT_CONFIG
    table = variants.without_retired_keys(_moved_objective_keys(config_table(path), path),
                                          path)
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2:
            raise ConfigError(f"--set {override!r}: expected section.key=value")
        section, name = parts
        if section == "optim" and name in OBJECTIVE_KEYS:
            raise ConfigError(f"--set {override!r}: {name} is set in [objective] "
                              f"(--set objective.{name}=...)")
        table.setdefault(section, {})[name] = _parse_value(raw)
    try:
        return from_dict(RunConfig, table)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


OBJECTIVE_KEYS = tuple(f.name for f in fields(ObjectiveConfig))


def config_table(path: Path, inside: tuple[Path, ...] = ()) -> dict:
    """A config file's TOML table; a file with ``base = "other.toml"`` (a path from its own
    folder) is that file's table with this one's sections laid over it key by key, so a
    recipe names only what it changes."""
    table = load_toml(path)
    base = table.pop("base", None)
    if base is None:
        return table
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the path of a config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in inside or base_path == path.resolve():
        raise ConfigError(f"{path}: base: {base} leads back to this file")
    merged = config_table(base_path, (*inside, path.resolve()))
    for section, values in table.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def resume_config(run_dir: Path, overrides: list[str] = ()) -> RunConfig:
    """The config to resume ``run_dir`` with: its own, with ``overrides`` (which the resumed
    run records in its config.toml). A change of ``train.max_steps`` is refused: the
    schedules of the steps already taken were laid out for the planned length."""
    config = load_config(run_dir / "config.toml", overrides)
    planned = load_config(run_dir / "config.toml").train.max_steps
    if config.train.max_steps != planned:
        raise ConfigError(f"{run_dir} was planned for {planned} steps, and its schedules with "
                          f"it; resume it as it is (--stop-at ends it earlier), or start a new "
                          f"run")
    return config


def _moved_objective_keys(table: dict, path: Path) -> dict:
    """Run folders written before ``[objective]`` existed kept its keys under ``[optim]``:
    read them where they belong now, with a warning (a key set in both: ``[objective]``'s)."""
    optim = table.get("optim", {})
    moved = [key for key in OBJECTIVE_KEYS if isinstance(optim, dict) and key in optim]
    if moved:
        warnings.warn(f"{path}: [optim] {', '.join(moved)} belong to [objective] now; read "
                      f"there", stacklevel=3)
        objective = table.setdefault("objective", {})
        for key in moved:
            objective.setdefault(key, optim.pop(key))
    return table


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string: --set data.dir=data/mine


def default_run_dir(config_path: str | Path | None) -> Path:
    name = Path(config_path).stem if config_path else "default"
    return Path("out") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def start_run_folder(run_dir: Path, config: RunConfig, vocab_meta: dict) -> None:
    """A new run folder with its resolved config and its vocabulary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(dump_toml(to_dict(config)))
    (run_dir / "vocab.json").write_text(json.dumps(vocab_meta))


# --- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``state`` (the step's weights and optimizer, the data's position) as a tjepa checkpoint,
    written atomically: a crash mid-write leaves the previous checkpoint whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A tjepa checkpoint, loaded with ``weights_only=True``; a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint there (nothing to resume)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise RunError(f"{path}: truncated or not a checkpoint ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a tjepa checkpoint (expected format "
                       f"{CHECKPOINT_FORMAT!r})")
    return state


# --- metrics -------------------------------------------------------------------------------


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


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


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


# --- reading a run back --------------------------------------------------------------------


def checkpoint_path(run_dir: str | Path, checkpoint: str | Path = "last") -> Path:
    """``last`` or ``best`` of a run folder, or any checkpoint file by its path: a relative
    path that names no file but one in the run folder is that one (``step-300.pt``)."""
    if str(checkpoint) in ("last", "best"):
        return Path(run_dir) / f"{checkpoint}.pt"
    path = Path(checkpoint)
    inside = Path(run_dir) / path
    return inside if not path.is_absolute() and not path.exists() and inside.exists() else path


def load_run(run_dir: str | Path, checkpoint: str | Path = "last", device: str = "cpu"
             ) -> tuple[Learner, RunConfig, data.Vocabulary]:
    """A run's model (eval mode), RunConfig and vocabulary, from the run folder alone; a run
    trained with flex_attention is read with SDPA (the same attention, and fast uncompiled).

    ``checkpoint``: ``last`` (the end of the run), ``best`` (the lowest validation loss) or a
    path. The model's ``checkpoint`` and ``checkpoint_step`` say which one it holds.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise RunError(f"{run_dir}: not a run folder (no config.toml)")
    config = load_config(run_dir / "config.toml")
    if config.model.attention == "flex":  # the same function; uncompiled flex is slow
        config = replace(config, model=replace(config.model, attention="sdpa"))
    path = checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(path, device)
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.checkpoint, model.checkpoint_step = str(path), int(state["step"])
    vocab = data.read_run_vocabulary(run_dir)
    return model.to(device).eval(), config, vocab


def embed_texts(run_dir: str | Path, texts: list[str], batch_size: int = 64,
                device: str = "cpu", checkpoint: str | Path = "last") -> np.ndarray:
    """Mean-pooled target-encoder embeddings of ``texts`` from a trained run folder: (N, D)
    float32.

    Tokens the run never saw in training go through the unseen-token id; texts longer than the
    run's block size are truncated.
    """
    model, config, vocab = load_run(run_dir, checkpoint, device)
    ids = [vocab.encode(t)[: config.data.block_size].astype(np.int64) for t in texts]
    out = []
    for start in range(0, len(ids), batch_size):
        tokens, lengths = pad(ids[start : start + batch_size])
        out.append(pooled(model.target_encoder, tokens.to(device), lengths.to(device)))
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, config.model.dim), np.float32)
