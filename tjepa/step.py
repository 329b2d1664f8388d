"""One training step, as an object: what ``tjepa.train`` runs in its loop and ``tjepa.lab.bench``
times.

    training_step = TrainingStep(config, device)  # model, optimizer, schedule, autocast, DDP
    batch = training_step.split(sampler(tokens, lengths))  # on the host, ahead (batches)
    loss = training_step(i, batch)           # forward, backward, optimizer, EMA: no host sync

The step reads like I-JEPA's: (1) forward — targets from the target encoder, predictions from
the context — over this rank's micro-batches, and backward; (2) clip and optimizer step;
(3) momentum update of the target encoder. The loss is normalized here, in one place: by the
number of targets in the whole global batch, so gradients equal one process on the whole batch
whatever the ranks and micro-batches.

Nothing in ``__call__`` waits for the device — no ``.item()``, no boolean indexing, no pageable
copies — so the host queues the next step while the card runs this one; a test audits it.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from tjepa.config import ConfigError
from tjepa.masking import MaskedBatch
from tjepa.model import Learner, ModelConfig
from tjepa.optim import Schedule, make_optimizer
from tjepa.packing import PackedBatch, pack
from tjepa.runs import RunConfig, build_model


@dataclass
class Distributed:
    """This process's place among the DDP ranks (one rank outside ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class StepBatch:
    """This rank's share of one global batch, ready for the step: its micro-batches (packed
    when ``train.pack_length`` asks), the number of targets in the whole global batch, and the
    global batch's input tokens (for throughput)."""

    parts: list[MaskedBatch | PackedBatch]
    total_targets: int
    input_tokens: int

    def pin_memory(self) -> StepBatch:
        return replace(self, parts=[part.pin_memory() for part in self.parts])


class TrainingStep:
    """Model, optimizer, schedule and autocast of a run, built one way for training and the
    bench; calling it takes one optimizer step.

    ``config.model`` must be resolved (vocabulary, attention backend: ``resolve_model``).
    Building it seeds torch's global generator with ``train.seed`` (the weights' init) and, on
    CUDA, allows TF32 matmuls. Compiles the networks in place when the config asks (the state
    dict keys are unchanged).
    """

    def __init__(self, config: RunConfig, device: torch.device, world: Distributed | None = None):
        self.config, self.device, self.world = config, device, world or Distributed()
        cuda = device.type == "cuda"
        torch.manual_seed(config.train.seed)
        if cuda:
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        self.model = build_model(config).to(device)
        self.optimizer = make_optimizer(self.model, config.optim, fused=cuda)
        self.schedule = Schedule(config.optim, config.train.max_steps)
        self.prediction_weight = config.objective.prediction_weight
        for network in self.model.networks():
            network.transformer.recompute = config.train.recompute_activations
        if config.train.compile:
            compile_networks(self.model, config.train.compile_scope)
        use_bf16 = config.train.dtype == "bfloat16" or (config.train.dtype == "auto" and cuda)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16
                         else nullcontext())
        self.network = self.model  # what the forward runs through: DDP's wrapper under DDP
        if self.world.world_size > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if cuda else None)

    def split(self, batch: MaskedBatch) -> StepBatch:
        """This rank's micro-batches of a global batch, packed when ``train.pack_length``
        asks. Made on the host, ahead of the step.

        Every rank holds the global batch's masks (index tensors: small), so it knows the
        global number of targets and normalizes by it.
        """
        accum, world = self.config.train.grad_accum, self.world
        parts = [batch.part(world.rank * accum + micro, world.world_size * accum)
                 for micro in range(accum)]
        if self.config.train.pack_length:
            parts = [pack(part, self.config.train.pack_length) for part in parts]
        return StepBatch(parts, int(batch.target_valid.sum()), int(batch.lengths.sum()))

    def __call__(self, step: int, batch: StepBatch) -> Tensor:
        """One optimizer step at schedule step ``step``. Returns the mean prediction loss over
        the whole global batch (this rank's part of it; add the ranks' for the global mean)."""
        self.schedule.apply(self.optimizer, step)
        n_parts = self.world.world_size * len(batch.parts)
        step_loss = torch.zeros((), device=self.device)
        for micro, part in enumerate(batch.parts):
            part = part.to(self.device, non_blocking=True)
            last = micro == len(batch.parts) - 1 or self.world.world_size == 1
            with nullcontext() if last else self.network.no_sync():  # all-reduce once, at the end
                # Step 1: forward and backward
                with self.autocast:
                    loss_sum, _, regularizer = self.network(part)
                loss = loss_sum / max(batch.total_targets, 1)
                # the regularizer is a mean over each part: average it over all parts
                regularized = self.prediction_weight * loss + regularizer / n_parts
                (regularized * self.world.world_size).backward()  # DDP averages ranks; undo it
            step_loss += loss.detach()
        # Step 2: clip and step the optimizer
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Step 3: momentum update of the target encoder
        self.model.update_target(self.schedule.momentum(step))
        return step_loss

    def measuring(self) -> contextlib.AbstractContextManager:
        """A block in which measurement (validation, the monitor) may draw random numbers —
        SIGReg's directions in the validation loss — from torch's generators, restored as they
        were at its end: so a run that measures at a step takes the same steps after it as one
        that does not, and a run stopped anywhere resumes exactly."""
        cuda = self.device.type == "cuda"
        return torch.random.fork_rng(devices=[self.device] if cuda else [],
                                     device_type=self.device.type)

    @torch.no_grad()
    def validation_loss(self, batches: list[MaskedBatch | PackedBatch]) -> dict[str, float]:
        """Mean loss over fixed validation batches (``val_loss``), and that of the best
        constant prediction (``val_constant_loss``): the yardstick. Waits for the device."""
        total, constant, count = (torch.zeros((), device=self.device) for _ in range(3))
        for batch in batches:
            batch = batch.to(self.device)
            with self.autocast:
                loss_sum, n, _ = self.model(batch)
                constant += self.model.constant_loss_sum(batch).float()
            total += loss_sum.float()
            count += n
        return {"val_loss": float(total / count.clamp(min=1)),
                "val_constant_loss": float(constant / count.clamp(min=1))}

    def state_dict(self) -> dict:
        """Weights, optimizer, and torch's random generators (SIGReg draws its projections
        from them): what a resumed run needs to take the same steps."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)


def global_mean(step_loss: Tensor, world: Distributed) -> float:
    """The step's loss over all ranks, on the host (waits for the device: call it to log)."""
    if world.world_size > 1:
        step_loss = step_loss.clone()
        dist.all_reduce(step_loss)
    return float(step_loss)


def resolve_model(config: RunConfig, device: torch.device, vocab_size: int) -> ModelConfig:
    """The model config as it will run: the vocabulary of the bins, and SDPA where flex would
    not pay (uncompiled flex_attention materializes the scores; on the CPU it has no backward).
    """
    attention = config.model.attention
    if attention == "flex" and not (config.train.compile and device.type == "cuda"):
        attention = "sdpa"
    return replace(config.model, vocab_size=vocab_size, attention=attention)


def compile_networks(model: Learner, scope: Literal["block", "network"] = "block") -> None:
    """torch.compile the networks in place (state dict keys unchanged).

    ``block``, regional compilation: the blocks share one compiled graph (the weights are its
    inputs), so the compiler works on one block per shape and grad mode, not on a whole
    network, and so does each recompile. ``network``: each network whole, which can fuse
    across blocks (the predictor's packed entry point too). Padded widths come in a handful
    of buckets (``train.pad_multiple``); packed rows are ``pack_length`` wide and only their
    number varies, which the compiler turns into a dynamic size after the first change.
    """
    # One graph serves every variant: encoder and predictor widths, grad on and off (target
    # encoder, evaluation), trainable and frozen weights, padded and packed shapes. That is
    # more than dynamo's default of 8 recompiles before it falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    for network in model.networks():
        if scope == "network":
            network.compile()
        else:
            for block in network.transformer.blocks:
                block.compile()


def init_distributed() -> Distributed:
    """Join the process group when ``torchrun`` started this process (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, world: Distributed) -> torch.device:
    """``train.device`` as a device: ``auto`` is CUDA when present; under DDP, this rank's card.
    """
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
