"""Probe scores that do not depend on the trained weights, kept beside the bins, so that the
runs of a sweep score their random-init twins and text-only shortcuts once.

For every run on one data folder with the same probe settings, a probe's random-init twins
and its ``length`` and ``bag_of_words`` shortcuts read the same texts and give the same
accuracies; only the trained encoder (and ``bag_of_embeddings``, its input table) change
from run to run. ``BaselineCache`` keeps those accuracies under a key made of everything they
depend on: the bins' files, the probe settings, the source of the package's modules and, for
a twin, a digest of its weights. A change to any of them is a new key, never a stale score.
A folder that cannot be written to is read from, or probed without a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

CACHE_DIR = "probe-cache"  # inside the bins folder
PACKAGE = Path(__file__).parent


def weights_digest(module: nn.Module) -> str:
    """A short digest of a module's parameters and buffers, names included."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()[:16]


def source_digest() -> str:
    """A digest of the package's own modules (not ``tjepa.lab``): what makes the features."""
    digest = hashlib.sha1()
    for path in sorted(PACKAGE.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def bins_digest(bins_dir: str | Path) -> str:
    """A digest of the bins folder's files: their names, sizes and modification times."""
    digest = hashlib.sha1()
    for path in sorted(p for p in Path(bins_dir).iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class BaselineCache:
    """Accuracies by probe and by model (``name@fingerprint``) for one data folder and one set
    of probe ``settings``; ``save`` writes what was added. ``enabled=False``: remembers
    nothing, so every score is computed."""

    def __init__(self, bins_dir: str | Path, settings: dict, enabled: bool = True):
        self.enabled = enabled
        context = {"bins": bins_digest(bins_dir), "source": source_digest(), **settings}
        key = hashlib.sha1(json.dumps(context, sort_keys=True, default=str).encode())
        self.path = Path(bins_dir) / CACHE_DIR / f"{key.hexdigest()[:20]}.json"
        self.scores: dict[str, dict[str, float]] = {}
        if enabled and self.path.is_file():
            self.scores = json.loads(self.path.read_text())
        self.added = 0

    def get(self, probe: str, model: str) -> float | None:
        return self.scores.get(probe, {}).get(model) if self.enabled else None

    def put(self, probe: str, model: str, accuracy: float) -> None:
        if self.enabled:
            self.scores.setdefault(probe, {})[model] = accuracy
            self.added += 1

    def save(self) -> None:
        """Writes the scores (atomically); a read-only data folder keeps no cache."""
        if not (self.enabled and self.added):
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(self.scores, indent=1, sort_keys=True))
            partial.replace(self.path)
        except OSError:
            return
        self.added = 0
