"""What several test modules share: a tiny run's overrides, the training CLI, and an
audit of the operators that make the host wait for a device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tjepa.masking import MaskedBatch, MaskingConfig, MaskSampler
from tjepa.model import ModelConfig

SMALL_MODEL = ModelConfig(vocab_size=50, dim=32, depth=2, heads=2, predictor_dim=16,
                          predictor_depth=2, predictor_heads=2)
LENGTHS = torch.tensor([64, 57, 31, 12, 64, 40, 9, 50])


def short_batch(seed: int = 0, views: int = 2) -> MaskedBatch:
    """Four short documents (40, 33, 20 and 9 tokens) and their views."""
    sampler = MaskSampler(MaskingConfig("ul2", views=views), seed=seed)
    tokens = torch.randint(1, 50, (4, 40), generator=torch.Generator().manual_seed(seed))
    return sampler(tokens, torch.tensor([40, 33, 20, 9]))


def varied_batch(seed: int = 0, views: int = 3, lengths: torch.Tensor = LENGTHS) -> MaskedBatch:
    """Documents of varied ``lengths`` and their views, widths rounded to 16 (for packing)."""
    sampler = MaskSampler(MaskingConfig("ul2", views=views), seed=seed, pad_multiple=16)
    width = int(lengths.max())
    tokens = torch.randint(1, 50, (len(lengths), width),
                           generator=torch.Generator().manual_seed(1))
    tokens = tokens.masked_fill(torch.arange(width) >= lengths[:, None], 0)
    return sampler(tokens, lengths)


TINY = [
    "model.dim=32", "model.depth=2", "model.heads=2", "model.predictor_dim=16",
    "model.predictor_depth=1", "model.predictor_heads=2", "data.batch_size=8",
    "data.block_size=96", "train.log_interval=1", "train.eval_interval=5",
    "train.eval_batches=1", "train.checkpoint_interval=4", "optim.warmup_steps=3",
    "train.device=\"cpu\"",
]


class HostWaits(TorchDispatchMode):
    """Records the operators in its block that make the host wait for a CUDA device: a
    scalar read back (``.item()``, ``bool(t)``, ``if t:``), an output whose size depends on
    the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``), a comparison
    answered on the host (``equal``). Dispatch modes see the operators a CPU run calls, so
    these are caught here, before they reach a card."""

    aten = torch.ops.aten
    WAITING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.argwhere.default,
               aten.masked_select.default, aten.equal.default, aten.is_nonzero.default,
               aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
               aten.repeat_interleave.Tensor, aten.bincount.default}
    INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                aten._index_put_impl_.default}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.WAITING or (func in self.INDEXING and any(
                index is not None and index.dtype == torch.bool for index in args[1])):
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def tiny(bins: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.dir={json.dumps(str(bins))}", *extra]


def run_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tjepa.train", *args], capture_output=True,
                          text=True, timeout=timeout)
