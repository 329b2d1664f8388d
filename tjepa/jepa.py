"""The JEPA step: targets from the EMA encoder, predictions from context, the loss, the schedules.

    target encoder (EMA, no grad)  : whole document         → layer norm → gather at targets
    context encoder                : context tokens only    → predictor (+ mask tokens) → loss

The target encoder is an exponential moving average of the context encoder (BYOL, I-JEPA):
it moves slowly, so the context encoder cannot chase a target that collapses with it. The loss
regresses *layer-normed* target embeddings (data2vec, I-JEPA), which fixes their scale: a
constant prediction then costs ≈ 0.42 in smooth L1, so a loss far below that means prediction,
and a loss near 0 with tiny embeddings would mean collapse (the monitor watches for it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn

from tjepa.config import check
from tjepa.masking import MaskedBatch, attention_groups
from tjepa.model import Encoder, ModelConfig, Predictor, attention_mask, init_weights
from tjepa.packing import PackedBatch

LossKind = Literal["smooth_l1", "l2", "cosine"]
Reduce = Callable[[Tensor], Tensor]  # sums a statistic over the rows other processes hold
AntiCollapse = Literal["ema", "sigreg", "vicreg"]


@dataclass
class OptimConfig:
    """AdamW with warmup-cosine learning rate, cosine weight decay and an EMA momentum ramp."""

    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.04  # I-JEPA: 0.04 → 0.4, cosine
    final_weight_decay: float = 0.4
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: off
    ema_momentum: float = 0.996  # I-JEPA: 0.996 → 1.0, linear
    final_ema_momentum: float = 1.0
    loss: LossKind = "smooth_l1"
    # What keeps the embeddings from collapsing (README "Anti-collapse"):
    #   ema    — targets from the EMA target encoder (I-JEPA, data2vec);
    #   sigreg — no EMA: targets from the context encoder itself, plus sigreg_weight × SIGReg
    #            on its embeddings (LeJEPA; λ = 0.05 there);
    #   vicreg — the EMA targets plus VICReg's variance hinge and covariance penalty on the
    #            context encoder's embeddings (weights relative to the prediction loss: VICReg's
    #            25 : 25 : 1 for invariance : variance : covariance).
    # The sigreg and vicreg terms are statistics of a micro-batch, summed over DDP ranks
    # (sum_over_ranks) but not over gradient-accumulation micro-batches.
    anti_collapse: AntiCollapse = "ema"
    sigreg_weight: float = 0.05
    sigreg_directions: int = 256
    target_stop_gradient: bool = True  # sigreg: no gradient through the targets
    vicreg_variance_weight: float = 1.0
    vicreg_covariance_weight: float = 0.04

    def __post_init__(self) -> None:
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        for name in ("ema_momentum", "final_ema_momentum"):
            check(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1]")


class JEPA(nn.Module):
    def __init__(self, config: ModelConfig, objective: OptimConfig | None = None):
        """``objective`` (the run's OptimConfig) chooses the loss and the anti-collapse
        mechanism; the default is smooth L1 with an EMA target."""
        super().__init__()
        self.config = config
        self.objective = objective or OptimConfig()
        self.context_encoder = Encoder(config)
        self.predictor = Predictor(config)
        init_weights(self)
        if self.uses_ema:
            self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        else:  # the online encoder makes its own targets
            self.target_encoder = self.context_encoder
        self._ema_pairs: tuple[list[Tensor], list[Tensor]] | None = None

    @property
    def uses_ema(self) -> bool:
        return self.objective.anti_collapse in ("ema", "vicreg")

    def forward(self, batch: MaskedBatch | PackedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Sum of per-token losses over real targets, their number, and the anti-collapse
        regularizer of this batch (0 for ``ema``); all 0-d. Padded and packed batches give the
        same result (``tjepa.packing``)."""
        predict = self.predict_packed if isinstance(batch, PackedBatch) else self.predict
        predictions, targets, context = predict(batch, return_context=True)
        per_token = prediction_loss(predictions.float(), targets.float(), self.objective.loss)
        valid = batch.target_valid
        regularizer = self.regularizer(context, batch.context_valid)
        return (per_token * valid).sum(), valid.sum(), regularizer

    def predict(self, batch: MaskedBatch, return_context: bool = False):
        """Predictions and targets at the packed target positions: both (V, P, D) (and the
        context embeddings (V, C, D) when ``return_context``)."""
        backend = self.config.attention
        with self._target_grad():
            targets = self.target_embeddings(batch.tokens, batch.lengths)  # (B, T, D)
            targets = F.layer_norm(targets, targets.shape[-1:])
            targets = targets[batch.document[:, None], batch.target_positions]  # (V, P, D)

        context_tokens = batch.tokens[batch.document[:, None], batch.context_positions]
        context_groups = torch.where(batch.context_valid, 0, -1)
        context = self.context_encoder(context_tokens, batch.context_positions,
                                       attention_mask(context_groups, backend))  # (V, C, D)
        predictions = self.predictor(context, batch.context_positions, batch.target_positions,
                                     attention_mask(attention_groups(batch), backend))
        return (predictions, targets, context) if return_context else (predictions, targets)

    def predict_packed(self, batch: PackedBatch, return_context: bool = False):
        """``predict`` on packed rows: predictions and targets (Rp, L, D) at every predictor
        slot (meaningful where ``batch.target_valid``), and the context embeddings (Rc, L, D)."""
        backend = self.config.attention
        with self._target_grad():
            document_groups = torch.where(batch.document_sequence >= 0, 0, -1)
            targets = self.target_encoder(
                batch.document_tokens, batch.document_positions,
                attention_mask(document_groups, backend, batch.document_sequence))
            targets = F.layer_norm(targets, targets.shape[-1:]).flatten(0, 1)
            targets = targets[batch.predictor_target]  # (Rp, L, D)

        context_groups = torch.where(batch.context_valid, 0, -1)
        context = self.context_encoder(
            batch.context_tokens, batch.context_positions,
            attention_mask(context_groups, backend, batch.context_sequence))  # (Rc, L, D)
        predictions = self.predictor.forward_packed(
            context.flatten(0, 1), batch.predictor_source, batch.target_valid,
            batch.predictor_positions,
            attention_mask(batch.predictor_group, backend, batch.predictor_sequence))
        return (predictions, targets, context) if return_context else (predictions, targets)

    def _target_grad(self) -> torch.set_grad_enabled:
        """Gradients through the targets only for SIGReg without stop-gradient."""
        target_grad = not (self.uses_ema or self.objective.target_stop_gradient)
        return torch.set_grad_enabled(target_grad and torch.is_grad_enabled())

    def regularizer(self, embeddings: Tensor, valid: Tensor) -> Tensor:
        """The anti-collapse term on the context embeddings (..., D) where ``valid`` (...)."""
        o = self.objective
        if o.anti_collapse == "ema":
            return embeddings.new_zeros(())
        # zero weight on padding: boolean indexing would wait for the device to count it
        embeddings, weight = embeddings.flatten(0, -2), valid.flatten().float()
        # under DDP, statistics of the global batch (the sums of all ranks), as one process
        # would take them; evaluation (no grad) keeps to its own rank
        reduce = sum_over_ranks if torch.is_grad_enabled() else _local
        if o.anti_collapse == "sigreg":
            return o.sigreg_weight * sigreg(embeddings, o.sigreg_directions, normalize=False,
                                            weight=weight, reduce=reduce)
        if o.anti_collapse == "vicreg":
            variance, covariance = vicreg_terms(embeddings, weight=weight, reduce=reduce)
            return o.vicreg_variance_weight * variance + o.vicreg_covariance_weight * covariance
        raise ValueError(f"unknown anti_collapse {o.anti_collapse!r}")

    def target_embeddings(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """The target encoder on whole documents (B, T) → (B, T, D); padding is masked."""
        return encode_documents(self.target_encoder, tokens, lengths, self.config.attention)

    @torch.no_grad()
    def update_target(self, momentum: float | Tensor) -> None:
        """target ← momentum · target + (1 − momentum) · context, in one foreach kernel."""
        if not self.uses_ema:
            return
        if self._ema_pairs is None:  # built once: the same Parameter objects live on after .to()
            self._ema_pairs = (list(self.target_encoder.parameters()),
                               list(self.context_encoder.parameters()))
        targets, online = self._ema_pairs
        torch._foreach_lerp_(targets, online, 1.0 - momentum)


def encode_documents(encoder: Encoder, tokens: Tensor, lengths: Tensor,
                     backend: str = "sdpa") -> Tensor:
    """An encoder on whole documents (B, T) with padding masked: (B, T, D)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    groups = torch.where(positions < lengths[:, None], 0, -1)
    return encoder(tokens, positions, attention_mask(groups, backend))


def mean_pool(h: Tensor, lengths: Tensor) -> Tensor:
    """Mean over each document's real tokens of (B, T, D) with padding past ``lengths``: (B, D).
    """
    valid = torch.arange(h.shape[1], device=h.device) < lengths[:, None]
    return (h * valid[..., None]).sum(1) / lengths[:, None]


def prediction_loss(predictions: Tensor, targets: Tensor, kind: LossKind) -> Tensor:
    """Per-token loss (V, P): smooth L1 and L2 averaged over the embedding, or 1 − cosine."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(predictions, targets, reduction="none").mean(-1)
    if kind == "l2":
        return F.mse_loss(predictions, targets, reduction="none").mean(-1)
    return 1 - F.cosine_similarity(predictions, targets, dim=-1)


# --- anti-collapse regularizers ------------------------------------------------------------


def _local(statistic: Tensor) -> Tensor:
    """A statistic as this process holds it: the ``reduce`` outside DDP or without grad."""
    return statistic


def sigreg(embeddings: Tensor, directions: int = 256, normalize: bool = True,
           generator: torch.Generator | None = None, knots: int = 33,
           weight: Tensor | None = None, reduce: Reduce = _local) -> Tensor:
    """Epps–Pulley statistic of random unit projections against N(0, 1), averaged (0-d).

    ``N ∫ |φ_N(t) − e^{−t²/2}|² e^{−t²/2} dt``, with φ_N the empirical characteristic function
    of the N projected values; its expectation for N(0, I) samples is √(2π)(1 − 1/√3) ≈ 1.06.
    ``normalize`` centres the embeddings and scales them to unit mean variance per direction
    first, which makes it a scale-free test of shape (the monitor; estimating mean and scale
    lowers the Gaussian level to ≈ 0.55); without it, it also asks for zero mean and unit
    variance (the LeJEPA regularizer). ``weight`` (N,) of 0/1 leaves rows out (padding).
    ``reduce`` sums each statistic over the rows held elsewhere (``sum_over_ranks``).
    Differentiable.
    """
    x = embeddings.float()
    w, n = _row_weights(x, weight, reduce)
    if normalize:
        x = x - _mean(x, w, n, reduce)
        scale = _mean(x.pow(2).sum(1, keepdim=True), w, n, reduce).div(x.shape[1]).sqrt()
        x = x / scale.clamp(min=1e-6)
    # summed over ranks, every rank projects on the same directions even if their random
    # states differ (a sum of Gaussians is Gaussian: still uniform once normalized)
    a = reduce(torch.randn(x.shape[1], directions, device=x.device, generator=generator))
    z = x @ F.normalize(a, dim=0)  # (N, M)
    t = torch.linspace(-5, 5, knots, device=x.device)
    zt = z[:, :, None] * t  # (N, M, K)
    # weighted sums over N as matrix-vector products, then the empirical characteristic
    # function's real and imaginary parts (M, K)
    sums = torch.stack([torch.einsum("n,nmk->mk", w[:, 0], zt.cos()),
                        torch.einsum("n,nmk->mk", w[:, 0], zt.sin())])
    real, imag = reduce(sums) / n.clamp(min=1)
    gauss = torch.exp(-t.square() / 2)
    integrand = ((real - gauss).square() + imag.square()) * gauss
    return n * torch.trapezoid(integrand, t, dim=-1).mean()


def vicreg_terms(embeddings: Tensor, eps: float = 1e-4, weight: Tensor | None = None,
                 reduce: Reduce = _local) -> tuple[Tensor, Tensor]:
    """VICReg's variance hinge (mean over dimensions of max(0, 1 − std)) and covariance
    penalty (squared off-diagonal covariances, summed, over the width) of (N, D); ``weight``
    (N,) of 0/1 leaves rows out (padding); ``reduce`` as in ``sigreg``."""
    x = embeddings.float()
    w, n = _row_weights(x, weight, reduce)
    x = (x - _mean(x, w, n, reduce)) * w  # centred on the mean of all rows, everywhere
    cov = reduce(x.T @ x) / (n - 1).clamp(min=1)  # (D, D)
    std = (torch.diagonal(cov) + eps).sqrt()
    variance = F.relu(1 - std).mean()
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return variance, off_diagonal.square().sum() / x.shape[1]


def sum_over_ranks(statistic: Tensor) -> Tensor:
    """A statistic summed over the DDP ranks, differentiably; itself outside DDP.

    Every rank then computes the same regularizer from the same sums, and the backward pass
    sums each rank's gradient with respect to them back (``torch.distributed.nn``), so rank
    r's rows get world_size × their share of the one-process gradient; DDP's mean over ranks
    takes that back to the one-process gradient.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist_nn.all_reduce(statistic)
    return statistic


def _row_weights(x: Tensor, weight: Tensor | None, reduce: Reduce) -> tuple[Tensor, Tensor]:
    """Row weights (N, 1) and their sum over all rows (0-d): all ones when none are given."""
    w = x.new_ones(len(x)) if weight is None else weight.to(x.dtype)
    return w[:, None], reduce(w.sum())


def _mean(x: Tensor, w: Tensor, n: Tensor, reduce: Reduce) -> Tensor:
    return reduce((x * w).sum(0)) / n.clamp(min=1)


# --- optimizer and schedules ---------------------------------------------------------------


def make_optimizer(model: JEPA, config: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms and the mask token get no decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not name.endswith("mask_token") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay, "decays": True},
              {"params": no_decay, "weight_decay": 0.0, "decays": False}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             fused=fused or None)


@dataclass(frozen=True)
class Schedule:
    """Learning rate, weight decay and EMA momentum at a step, for a run of ``total`` steps."""

    config: OptimConfig
    total: int

    def lr(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, self.total - c.warmup_steps)
        return c.min_lr + (c.lr - c.min_lr) * _cosine(progress)

    def weight_decay(self, step: int) -> float:
        c = self.config
        progress = step / max(1, self.total)
        return c.final_weight_decay + (c.weight_decay - c.final_weight_decay) * _cosine(progress)

    def momentum(self, step: int) -> float:
        c = self.config
        progress = min(1.0, step / max(1, self.total))
        return c.ema_momentum + (c.final_ema_momentum - c.ema_momentum) * progress

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        lr, wd = self.lr(step), self.weight_decay(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group["decays"]:
                group["weight_decay"] = wd


def _cosine(progress: float) -> float:
    """1 → 0 along half a cosine as progress goes 0 → 1."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
