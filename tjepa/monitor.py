"""Collapse metrics, watched live: is the encoder still saying different things about different
inputs?

A JEPA can cheat: if the target encoder maps everything to one point (complete collapse) or to
a few directions (dimensional collapse), prediction becomes easy and the loss falls while the
representation dies. The metrics below tell these apart:

- ``rankme``: exp of the entropy of the normalized singular values (Garrido et al. 2023),
  the effective number of dimensions in use; ≈ 1 when collapsed, up to the width when healthy.
- ``std``: mean per-dimension standard deviation of L2-normalized embeddings (≈ 1/√d healthy,
  → 0 under complete collapse).
- ``sigreg``: the Epps–Pulley statistic of random 1-D projections against N(0, 1) (LeJEPA,
  Balestriero & LeCun 2025), ≈ 0.55 for Gaussian embeddings once centred and scaled, far
  larger when they are squeezed into few directions.

``lidar`` (Thilak et al. 2023) is not watched live: it needs several masked views of each
document, and weighs each direction by how far documents differ along it against how far one
document's views do (``python -m tjepa.lab.lidar`` measures it on trained runs).

``std`` misses dimensional collapse: embeddings on a 2-D plane still spread out. RankMe and
SIGReg catch it, so the alarm rests on RankMe (and on ``std`` only for the complete collapse it
does see). Metrics are computed on token embeddings (plain keys) and, for RankMe and std, on
mean-pooled documents (``_doc`` keys).

What collapses is what the predictor regresses, and that is not always the target encoder's
last layer: data2vec's targets average the top blocks' feed-forward outputs, which can crowd
into one direction while the last layer stays spread. So a JEPA's regression targets
(``Learner.document_targets``) are measured too (``targets_`` keys, tokens only: instance-normed
targets average to zero over each document), and the alarm watches both.

A fixed RankMe line cannot catch a partial collapse: a run whose rank falls from most of the
width to a fifth of it stays far above a line low enough for every healthy run. So the alarm
also judges each RankMe against the run's own: it trips when the token or document RankMe
falls below ``rankme_drop`` of the highest value the run has shown.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tjepa.attention import attention_mask
from tjepa.config import check
from tjepa.jepa import encode_documents, mean_pool
from tjepa.masking import MaskedBatch
from tjepa.mlm import MaskedInput
from tjepa.model import Learner
from tjepa.objective import sigreg


@dataclass
class MonitorConfig:
    interval: int = 50  # steps between measurements
    documents: int = 256  # held-out validation documents measured each time
    max_tokens: int = 2048  # token embeddings sampled from them for the metrics
    rankme_alarm: float = 0.1  # alarm when the target encoder's token RankMe < this × width,
    std_alarm: float = 0.2  # ... or when its token std < this × 1/√width,
    rankme_drop: float = 0.5  # ... or its token or document RankMe < this × the run's peak
    stop_on_alarm: bool = False

    def __post_init__(self) -> None:
        check(self.interval >= 1, f"interval must be >= 1, got {self.interval}")
        check(self.documents >= 2, f"documents must be >= 2, got {self.documents}")
        check(0 <= self.rankme_alarm < 1, "rankme_alarm must be in [0, 1)")
        check(0 <= self.rankme_drop < 1, "rankme_drop must be in [0, 1)")


def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """Effective rank of (N, D): exp(entropy(σ / Σσ))."""
    singular = torch.linalg.svdvals(embeddings.double())
    p = singular / singular.sum().clamp(min=eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the std across samples of L2-normalized embeddings."""
    return float(F.normalize(embeddings.double(), dim=-1).std(0).mean())


def collapse_metrics(tokens: Tensor, documents: Tensor | None = None,
                     prefix: str = "") -> dict[str, float]:
    """All metrics for token embeddings (M, D), plus RankMe and std of mean-pooled document
    embeddings (N, D) as ``rankme_doc`` and ``std_doc``.

    The token level leads: mean-pooling a random-init encoder already gives near-identical
    document vectors (pooling averages its noise away), so document metrics look collapsed at
    step 0 even when nothing is wrong.
    """
    generator = torch.Generator(tokens.device).manual_seed(0)  # same projections each time
    metrics = {
        "rankme": rankme(tokens),
        "std": embedding_std(tokens),
        "sigreg": float(sigreg(tokens, generator=generator)),
    }
    if documents is not None:
        metrics["rankme_doc"] = rankme(documents)
        metrics["std_doc"] = embedding_std(documents)
    return {f"{prefix}{k}": round(v, 5) for k, v in metrics.items()}


def lidar(views: Tensor, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2023): the effective rank of the linear discriminant matrix of
    embeddings (N, Q, D), Q views of each of N documents, each document a class of its own:
    exp(entropy(λ / Σλ)) over the eigenvalues λ of Σ_w^(-1/2) Σ_b Σ_w^(-1/2), with Σ_b the
    scatter of the documents' mean embeddings and Σ_w that of each document's views around its
    mean (plus ``delta`` on the diagonal). RankMe counts every direction the embeddings use;
    LiDAR weighs each direction by how far documents differ along it against how far one
    document's views do. A document's mean holds its views' noise too, so documents that do
    not differ at all still score high (``lidar_chance``), and the score is at most
    min(N − 1, D)."""
    x = views.double()
    n, q, d = x.shape
    means = x.mean(1)  # (N, D)
    between_dev = means - means.mean(0)
    between = between_dev.T @ between_dev / (n - 1)  # (D, D)
    within_dev = (x - means[:, None]).reshape(n * q, d)
    within = within_dev.T @ within_dev / (n * (q - 1)) + delta * torch.eye(d, dtype=x.dtype,
                                                                        device=x.device)
    values, vectors = torch.linalg.eigh(within)
    inv_sqrt = vectors @ torch.diag(values.clamp(min=delta).rsqrt()) @ vectors.T
    spectrum = torch.linalg.eigvalsh(inv_sqrt @ between @ inv_sqrt).clamp(min=0)
    p = spectrum / spectrum.sum().clamp(min=eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def lidar_chance(views: Tensor, seed: int = 0) -> float:
    """``lidar`` of the same embeddings (N, Q, D) with the views dealt out to documents at
    random: what LiDAR reads when a "document" is no more alike than any Q views are."""
    n, q, d = views.shape
    order = torch.randperm(n * q, generator=torch.Generator().manual_seed(seed))
    return lidar(views.reshape(n * q, d)[order.to(views.device)].view(n, q, d))


@torch.no_grad()
def view_embeddings(encoder, batch: MaskedBatch, attention: str = "sdpa",
                    mask_id: int | None = None) -> Tensor:
    """An encoder on each view, mean-pooled over its context tokens: (B, Q, D) for a batch of
    B documents with Q views each (``MaskedBatch.document`` runs document-major). With
    ``mask_id`` the encoder reads each view as a masked LM's encoder does, a ``[MASK]`` at each
    target position after the context (``tjepa.mlm.MaskedInput``); without, the context
    tokens alone, as a JEPA's context encoder does."""
    if mask_id is None:
        tokens = batch.tokens[batch.document[:, None], batch.context_positions]  # (V, C)
        positions, groups = batch.context_positions, torch.where(batch.context_valid, 0, -1)
    else:
        masked = MaskedInput.of(batch, mask_id)  # (V, C + P)
        tokens, positions, groups = masked.tokens, masked.positions, masked.groups
    h = encoder(tokens, positions, attention_mask(groups, attention))  # (V, C[+P], D)
    context = h[:, :batch.context_positions.shape[1]].float()  # the context slots come first
    pooled = mean_pool(context, batch.context_valid.sum(1))  # and are left-aligned
    return pooled.view(len(batch.lengths), -1, pooled.shape[-1])


WATCHED = {"": "target encoder", "targets_": "regression targets"}  # key prefix: what it is


@dataclass
class CollapseAlarm:
    """Trips once when RankMe or std of the target encoder or of the regression targets fall
    below their lines, or a token or document RankMe of either falls below ``rankme_drop`` of
    the run's peak. ``history``: the
    records a resumed run logged before (their peaks count)."""

    config: MonitorConfig
    width: int
    history: list[dict] = field(default_factory=list)
    tripped_at: int | None = None

    def __post_init__(self) -> None:
        self.peaks = {"rankme": 0.0, "rankme_doc": 0.0, "targets_rankme": 0.0}
        for record in self.history:
            self._remember(record)
            if record.get("collapse_alarm") and self.tripped_at is None:
                self.tripped_at = record["step"]

    def _remember(self, metrics: dict[str, float]) -> None:
        for key in self.peaks:
            self.peaks[key] = max(self.peaks[key], metrics.get(key, 0.0))

    @property
    def rankme_line(self) -> float:
        return self.config.rankme_alarm * self.width

    @property
    def std_line(self) -> float:
        return self.config.std_alarm / math.sqrt(self.width)

    def check(self, metrics: dict[str, float], step: int) -> bool:
        """True when this measurement trips the alarm (warns the first time only)."""
        self._remember(metrics)
        dropped = [key for key, peak in self.peaks.items()
                   if key in metrics and metrics[key] < self.config.rankme_drop * peak]
        below = [watched for watched in WATCHED if f"{watched}rankme" in metrics and (
            metrics[f"{watched}rankme"] < self.rankme_line
            or metrics[f"{watched}std"] < self.std_line)]
        collapsed = bool(below or dropped)
        if collapsed and self.tripped_at is None:
            self.tripped_at = step
            lines = "; ".join(
                f"{WATCHED[w]}: RankMe {metrics[f'{w}rankme']:.2f} (line {self.rankme_line:.2f})"
                f", std {metrics[f'{w}std']:.4f} (line {self.std_line:.4f})" for w in below)
            fell = "; ".join(f"{key} {metrics[key]:.1f} of a peak of {self.peaks[key]:.1f}"
                             for key in dropped)
            warnings.warn(f"collapse alarm at step {step}: "
                          + "; ".join(x for x in (lines, fell) if x), stacklevel=2)
        return collapsed


@torch.no_grad()
def measure(model: Learner, tokens: Tensor, lengths: Tensor,
            max_tokens: int = 2048) -> dict[str, float]:
    """Collapse metrics of the target encoder (plain keys), of a JEPA's regression targets
    (``targets_``) and of the context encoder (``context_``) on whole documents tokens (B, T),
    lengths (B,)."""
    valid = torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]
    token_index = valid.flatten().nonzero().squeeze(1)
    token_index = token_index[torch.randperm(len(token_index),
                                             generator=torch.Generator().manual_seed(0))
                              .to(token_index.device)[:max_tokens]]

    def metrics(h: Tensor, prefix: str = "", documents: bool = True) -> dict[str, float]:
        h = h.float()  # (B, T, D)
        return collapse_metrics(h.flatten(0, 1)[token_index],
                                mean_pool(h, lengths) if documents else None, prefix)

    def encoded(encoder) -> Tensor:
        return encode_documents(encoder, tokens, lengths, model.config.attention)

    h = encoded(model.target_encoder)
    out = metrics(h)
    targets = model.document_targets(tokens, lengths, encoded=h)
    if targets is not None:  # a masked LM regresses nothing
        # tokens only: instance-normed targets average to zero over each document
        out |= metrics(targets, "targets_", documents=False)
    if model.context_encoder is model.target_encoder:  # no EMA: one encoder, measured once
        return out | {f"context_{k}": v for k, v in out.items() if not k.startswith("targets_")}
    return out | metrics(encoded(model.context_encoder), "context_")
