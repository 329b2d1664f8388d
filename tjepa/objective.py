"""The training objective: what the predictions are scored against, and what keeps the
embeddings from collapsing.

The predictor regresses *layer-normed* target embeddings (data2vec, I-JEPA), which fixes their
scale; ``prediction_loss`` scores each predicted token by smooth L1. Regressing embeddings that
the model itself produces has a trivial solution, every embedding the same; ``anti_collapse``
chooses what rules it out (``ObjectiveConfig``):

- ``ema``: targets from an exponential moving average of the context encoder (BYOL, I-JEPA):
  it moves slowly, so the context encoder cannot chase a target that collapses with it;
- ``sigreg``: no EMA, the context encoder makes its own targets, and SIGReg pulls its
  embeddings towards an isotropic Gaussian (LeJEPA);
- ``vicreg``: the EMA targets plus VICReg's variance hinge and covariance penalty on the
  context encoder's embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor

from tjepa.config import check

ObjectiveName = Literal["jepa", "mlm", "mlm+jepa"]
LossKind = Literal["smooth_l1", "distill"]
AntiCollapse = Literal["ema", "sigreg", "vicreg"]
TargetKind = Literal["last", "blocks", "embedding"]
BlockNorm = Literal["instance", "layer"]
Student = Literal["predictor", "encoder"]
Reduce = Callable[[Tensor], Tensor]  # sums a statistic over the rows other processes hold


@dataclass
class ObjectiveConfig:
    """What a run learns to do.

    ``name``: ``jepa``, the JEPA's embedding prediction, or ``mlm``, the masked-LM baseline
    (``tjepa.mlm``: the hidden tokens' ids, by cross-entropy, on the same encoder and masks).

    For the JEPA, ``anti_collapse`` and that mechanism's weights (``anti_collapse_term``).
    The sigreg and vicreg terms are statistics of a micro-batch, summed over DDP ranks
    (``sum_over_ranks``) but not over gradient-accumulation micro-batches.

    SIGReg is weighed as LeJEPA weighs it: the loss is (1 − λ)·prediction + λ·SIGReg with
    λ = ``sigreg_weight`` (LeJEPA: 0.05), and SIGReg's statistic is taken at a fixed sample
    count, ``sigreg_samples`` (LeJEPA's is its per-view batch, a few hundred images), not at
    the number of tokens a micro-batch happens to hold: so λ means the same at any batch size,
    number of views, ``grad_accum`` or world size. The VICReg terms' weights are relative to
    the prediction loss (VICReg's paper: 25 : 25 : 1 for invariance : variance : covariance).

    The taught JEPA predicts with a predictor (``student = "predictor"``) the target
    encoder's last layer (``target = "last"``) by smooth L1 (``loss = "smooth_l1"``). Every
    other value of ``student``, ``loss`` and ``target``, and the keys that go with them
    (``temperature``, ``prototypes``, ``teacher_temperature``, ``centre_momentum``,
    ``target_blocks``, ``target_block_norm``, ``share_embeddings``, ``jepa_weight`` and
    ``name = "mlm+jepa"``), is a variant: ``tjepa.variants`` says what each does, checks it
    and builds it.
    """

    name: ObjectiveName = "jepa"
    loss: LossKind = "smooth_l1"
    anti_collapse: AntiCollapse = "ema"
    sigreg_weight: float = 0.05
    sigreg_directions: int = 256
    sigreg_samples: int = 256
    target_stop_gradient: bool = True  # sigreg: no gradient through the targets
    vicreg_variance_weight: float = 1.0
    vicreg_covariance_weight: float = 0.04
    jepa_weight: float = 1.0  # variant mlm+jepa: the JEPA loss's weight
    temperature: float = 0.1  # variant distill: the student's softmax temperature
    prototypes: int = 1024  # variant distill: the directions both distributions are over
    teacher_temperature: float = 0.04  # variant distill: DINO's sharpening of the teacher
    centre_momentum: float = 0.9  # variant distill: how slowly the teacher's centre moves
    target: TargetKind = "last"
    target_blocks: int = 0  # variant blocks: how many top blocks (0: all)
    target_block_norm: BlockNorm = "instance"  # variant blocks
    share_embeddings: bool = False  # variant: one token table for both encoders
    student: Student = "predictor"

    def __post_init__(self) -> None:
        check(self.sigreg_directions >= 1,
              f"sigreg_directions must be >= 1, got {self.sigreg_directions}")
        check(self.sigreg_samples >= 1,
              f"sigreg_samples must be >= 1, got {self.sigreg_samples}")
        check(self.sigreg_weight < 1, f"sigreg_weight must be < 1, got {self.sigreg_weight}")
        for name in ("sigreg_weight", "vicreg_variance_weight", "vicreg_covariance_weight"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def prediction_weight(self) -> float:
        """What the prediction loss is multiplied by in the loss that is minimized: 1 − λ
        under SIGReg (LeJEPA's convex combination), 1 otherwise."""
        return 1 - self.sigreg_weight if self.anti_collapse == "sigreg" else 1.0

    @property
    def uses_ema(self) -> bool:
        """Whether the targets come from an EMA target encoder (else the online encoder)."""
        return self.anti_collapse in ("ema", "vicreg")


def prediction_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Per-token smooth L1 (V, P) of predictions and targets (V, P, D), averaged over the
    embedding (I-JEPA, §3.4): quadratic for small errors, linear for large ones, so a few
    far-off targets do not dominate the gradient."""
    return F.smooth_l1_loss(predictions, targets, reduction="none").mean(-1)


def anti_collapse_term(config: ObjectiveConfig, embeddings: Tensor, valid: Tensor) -> Tensor:
    """The weighted anti-collapse regularizer on embeddings (..., D) where ``valid`` (...); 0-d,
    and 0 for ``ema``, whose protection is the target encoder itself."""
    if config.anti_collapse == "ema":
        return embeddings.new_zeros(())
    # zero weight on padding: boolean indexing would wait for the device to count it
    embeddings, weight = embeddings.flatten(0, -2), valid.flatten().float()
    # under DDP, statistics of the global batch (the sums of all ranks), as one process
    # would take them; evaluation (no grad) keeps to its own rank
    reduce = sum_over_ranks if torch.is_grad_enabled() else _local
    if config.anti_collapse == "sigreg":
        return config.sigreg_weight * sigreg(embeddings, config.sigreg_directions,
                                             normalize=False, weight=weight, reduce=reduce,
                                             samples=config.sigreg_samples)
    if config.anti_collapse == "vicreg":
        variance, covariance = vicreg_terms(embeddings, weight=weight, reduce=reduce)
        return (config.vicreg_variance_weight * variance
                + config.vicreg_covariance_weight * covariance)
    raise ValueError(f"unknown anti_collapse {config.anti_collapse!r}")


def _local(statistic: Tensor) -> Tensor:
    """A statistic as this process holds it: the ``reduce`` outside DDP or without grad."""
    return statistic


def sigreg(embeddings: Tensor, directions: int = 256, normalize: bool = True,
           generator: torch.Generator | None = None, knots: int = 33,
           weight: Tensor | None = None, reduce: Reduce = _local,
           samples: int | None = None) -> Tensor:
    """Epps–Pulley statistic of random unit projections against N(0, 1), averaged (0-d).

    ``N ∫ |φ_N(t) − e^{−t²/2}|² e^{−t²/2} dt``, with φ_N the empirical characteristic function
    of the N projected values; its expectation for N(0, I) samples is √(2π)(1 − 1/√3) ≈ 1.06.
    ``normalize`` centres the embeddings and scales them to unit mean variance per direction
    first, which makes it a scale-free test of shape (the monitor; estimating mean and scale
    lowers the Gaussian level to ≈ 0.55); without it, it also asks for zero mean and unit
    variance (the LeJEPA regularizer). ``weight`` (N,) of 0/1 leaves rows out (padding).
    ``reduce`` sums each statistic over the rows held elsewhere (``sum_over_ranks``).
    ``samples``: the N the integral is multiplied by, when it should not be the number of rows
    (the regularizer: a fixed N, so its weight does not move with the batch). Differentiable.
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
    return (n if samples is None else samples) * torch.trapezoid(integrand, t, dim=-1).mean()


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
