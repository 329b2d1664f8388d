"""Where the step's batches come from: documents drawn, masked, split and packed in a thread.

    loader (tjepa.data) → mask sampler (tjepa.masking) → step.split (ranks, micro-batches,
    packing) → pinned → queue → the training loop

``BatchStream`` does this ahead of the step, so the host's work overlaps the device's and the
loop only waits when the thread falls behind (``waiting_s`` says how often). Validation uses
batches of its own, fixed once, drawn from the validation split with a seed of their own.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from torch import Tensor

from tjepa import data
from tjepa.masking import MaskedBatch, MaskSampler
from tjepa.packing import PackedBatch, pack
from tjepa.runs import RunConfig


def mask_sampler(config: RunConfig, seed_offset: int = 0) -> MaskSampler:
    """The run's mask sampler: its mixture and views, its seed (+ ``seed_offset`` for a stream
    of its own), widths rounded as ``train.pad_multiple`` asks."""
    return MaskSampler(config.masking, seed=config.train.seed + seed_offset,
                       pad_multiple=config.train.pad_multiple)


class BatchStream:
    """Batches made ahead in a background thread — drawn, masked, made ready for the step
    (``prepare``: split into this rank's parts, packed), pinned — so that work overlaps the
    device's. The state it reports (loader position, sampler generator) is that of the last
    batch handed out, not of the ones made ahead: checkpoints resume exactly. ``making_s`` and
    ``waiting_s`` say whether the thread keeps ahead: seconds spent making the ``made``
    batches, and seconds ``next`` waited."""

    def __init__(self, loader: data.DocumentLoader, sampler: MaskSampler,
                 prepare: Callable[[MaskedBatch], Any], pin: bool = False, ahead: int = 2):
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
                batch = self.prepare(self.sampler(*self.loader.next_batch()))
                if self.pin:
                    batch = batch.pin_memory()
                self.made, self.making_s = self.made + 1, self.making_s + (
                    time.perf_counter() - started)
                item = (batch, self.loader.position, self.sampler.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaces in next(), on the training thread
            self._queue.put(e)

    def next(self) -> Any:
        """The next batch, as ``prepare`` made it."""
        if self._stop.is_set():
            raise RuntimeError("the batch stream is closed")
        started = time.perf_counter()
        item = self._queue.get()
        self.waiting_s += time.perf_counter() - started
        if isinstance(item, BaseException):
            raise item
        batch, self.loader_position, self.sampler_state = item
        return batch

    def state_dict(self) -> dict:
        """Where the data of the last batch handed out came from: enough to resume exactly."""
        return {"sampler": self.sampler_state, "loader_position": self.loader_position}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def validation_loader(bins: data.TokenBins, config: RunConfig,
                      batch_size: int) -> data.DocumentLoader:
    """Documents of the validation split, in the run's seeded order."""
    split = bins.split("val")
    return data.DocumentLoader(split, min(batch_size, len(split)), config.data.block_size,
                               seed=config.train.seed, min_tokens=config.data.min_tokens)


def validation_batches(bins: data.TokenBins, config: RunConfig
                       ) -> list[MaskedBatch | PackedBatch]:
    """The same validation batches at every evaluation, from a seed of their own (laid out as
    the training batches are, so a compiled run sees the shapes it already knows)."""
    loader = validation_loader(bins, config, config.data.batch_size)
    sampler = mask_sampler(config, seed_offset=1)
    batches = [sampler(*loader.next_batch()) for _ in range(config.train.eval_batches)]
    if config.train.pack_length:
        batches = [pack(batch, config.train.pack_length) for batch in batches]
    return batches


def held_out_documents(bins: data.TokenBins, config: RunConfig) -> tuple[Tensor, Tensor]:
    """A fixed batch of validation documents for the collapse metrics: tokens, lengths."""
    return validation_loader(bins, config, config.monitor.documents).next_batch()
