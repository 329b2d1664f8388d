"""The training objective: what the predictions are scored against, and what keeps the
embeddings from collapsing.

The predictor regresses *layer-normed* target embeddings (data2vec, I-JEPA), which fixes their
scale; ``prediction_loss`` scores each predicted token. Regressing embeddings that the model
itself produces has a trivial solution, every embedding the same; ``anti_collapse`` chooses
what rules it out (``ObjectiveConfig``):

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
LossKind = Literal["smooth_l1", "l2", "cosine", "infonce", "distill"]
AntiCollapse = Literal["ema", "sigreg", "vicreg"]
TargetKind = Literal["last", "blocks", "embedding"]
BlockNorm = Literal["instance", "layer"]
SpanTargets = Literal["off", "only", "also"]
TargetCentering = Literal["off", "token"]
Student = Literal["predictor", "encoder"]
Reduce = Callable[[Tensor], Tensor]  # sums a statistic over the rows other processes hold


@dataclass
class ObjectiveConfig:
    """What a run learns to do: ``name`` the objective — ``jepa``, the JEPA's embedding
    prediction, or ``mlm``, the masked-LM baseline (``tjepa.mlm``: the hidden tokens' ids, by
    cross-entropy, on the same encoder and masks) or ``mlm+jepa``, the masked LM's loss plus
    ``jepa_weight`` × the JEPA's (``tjepa.mlm.MaskedLMJEPA``) — and, for the JEPA, its
    per-token ``loss`` and its anti-collapse mechanism with that mechanism's weights.

    The sigreg and vicreg terms are statistics of a micro-batch, summed over DDP ranks
    (``sum_over_ranks``) but not over gradient-accumulation micro-batches.

    SIGReg is weighed as LeJEPA weighs it: the loss is (1 − λ)·prediction + λ·SIGReg with
    λ = ``sigreg_weight`` (LeJEPA: 0.05), and SIGReg's statistic is taken at a fixed sample
    count, ``sigreg_samples`` (LeJEPA's is its per-view batch, a few hundred images), not at
    the number of tokens a micro-batch happens to hold: so λ means the same at any batch size,
    number of views, ``grad_accum`` or world size. The VICReg terms' weights are relative to
    the prediction loss (VICReg's paper: 25 : 25 : 1 for invariance : variance : covariance).

    What the predictor regresses, ``target``:

    - ``last``: the target encoder's last layer, layer-normed (I-JEPA);
    - ``blocks``: data2vec's target: the feed-forward outputs (before the residual add) of the
      top ``target_blocks`` blocks (0: all), each normalized by ``target_block_norm`` —
      ``instance``, each feature over the document's tokens, or ``layer``, each token over its
      features — then averaged. The residual stream carries each token's input embedding up to
      the last layer; a block's own output does not, so these targets are less a code of the
      hidden word and more what the context made of it.
    - ``embedding``: the target encoder's input embedding of the hidden token, layer-normed: the
      word's code and nothing the context made of it (the target token share is 1 by
      construction), the bottom end of data2vec's choice of target layer. Against ``last`` it
      measures what the target encoder's blocks add to a JEPA's target; with it, the JEPA
      learns only to guess the hidden word.

    ``span_targets``: ``only`` scores each target span once, its predictions' mean against its
    targets' mean (weighed by its length, so every target token counts as much as before);
    ``also`` adds that to the per-token loss; ``off``, the per-token loss alone. A span's mean
    keeps what its tokens share — what the span is about — and averages away the exact words.

    ``target_centering``: ``token`` subtracts from each target the mean target of its token id
    over the batch's documents, then scales the rest to a unit mean square (``token_centred``).
    On real text most of a target's variance is the hidden word's fixed code (the target token
    share), and a regression on a code it must guess among many gains little even when right:
    what is left is what the context made of the word. A word that occurs once in the batch
    has its own target as its mean, so its target is zero. ``off``: the targets as they are.

    ``share_embeddings``: the target encoder reads the context encoder's token embedding table
    (data2vec's ``ema_transformer_layers_only``): the EMA then moves only the blocks, and the
    targets follow learned word embeddings, not an average of their random start.

    ``student``: who predicts the targets. ``predictor`` (I-JEPA): the context encoder reads
    the context tokens alone, and the predictor gets its embeddings plus mask tokens at the
    target positions. ``encoder`` (data2vec's student, ``tjepa.data2vec``): the context encoder
    itself reads the document with a ``[MASK]`` id at each target position, as a masked LM's
    encoder does, and a two-layer head turns its outputs there into the predictions; no
    predictor. The context then has to be read into the encoder's own outputs, where the probes
    look, not into a predictor's.

    ``loss = "distill"`` scores each prediction by DINO's and iBOT's cross-entropy over
    ``prototypes`` learned directions (``tjepa.distill``): the student's softmax over its
    cosines to them at ``temperature`` against the teacher's over the target's cosines to
    their EMA, centred and sharpened at ``teacher_temperature``; the centre follows the
    teacher's mean logits at ``centre_momentum``. It needs an EMA (the teacher's prototypes
    follow the student's at the target encoder's momentum) and per-token targets.

    ``document_weight`` (iBOT's λ for its [CLS] loss; 0: off) adds, for ``student =
    "encoder"`` with ``loss = "distill"``, the same self-distillation on whole documents:
    the student's mean output over the masked document against the teacher's mean target of
    the whole document, over prototypes and a centre of their own (``tjepa.data2vec``). The
    token loss asks what stood at each hidden slot; this one asks what the whole document is,
    the question the probes put to a pooled embedding.
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
    jepa_weight: float = 1.0  # mlm+jepa: λ, the JEPA loss's weight beside the masked LM's
    temperature: float = 0.1  # infonce, distill: the (student's) softmax temperature
    prototypes: int = 1024  # distill: K, the directions both distributions are over
    teacher_temperature: float = 0.04  # distill: DINO's sharpening of the teacher
    centre_momentum: float = 0.9  # distill: how slowly the teacher's centre moves
    target: TargetKind = "last"
    target_blocks: int = 0
    target_block_norm: BlockNorm = "instance"
    share_embeddings: bool = False
    span_targets: SpanTargets = "off"
    target_centering: TargetCentering = "off"
    student: Student = "predictor"
    document_weight: float = 0.0  # distill with the encoder student: iBOT's [CLS] loss

    def __post_init__(self) -> None:
        check(self.student == "predictor" or self.name == "jepa",
              f"student = {self.student!r} is a JEPA's: objective.name must be 'jepa', got "
              f"{self.name!r}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        if self.loss == "distill":
            check(self.uses_ema, "loss = 'distill' needs a teacher: anti_collapse ema or "
                  f"vicreg, got {self.anti_collapse!r}")
            check(self.name == "jepa", f"loss = 'distill' is a JEPA's: objective.name must be "
                  f"'jepa', got {self.name!r}")
            check(self.span_targets == "off", "loss = 'distill' scores tokens: span_targets "
                  f"must be 'off', got {self.span_targets!r}")
            check(self.prototypes >= 2, f"prototypes must be >= 2, got {self.prototypes}")
            check(self.teacher_temperature > 0,
                  f"teacher_temperature must be > 0, got {self.teacher_temperature}")
            check(0 <= self.centre_momentum < 1,
                  f"centre_momentum must be in [0, 1), got {self.centre_momentum}")
        if self.document_weight:  # iBOT's [CLS] loss beside its masked prediction
            check(self.loss == "distill", "document_weight is iBOT's [CLS] loss: it needs "
                  f"loss = 'distill', got {self.loss!r}")
            check(self.student == "encoder", "document_weight is iBOT's [CLS] loss: it needs "
                  f"student = 'encoder', got {self.student!r}")
        check(self.target_blocks >= 0, f"target_blocks must be >= 0, got {self.target_blocks}")
        check(self.target != "embedding" or self.target_centering == "off",
              "target = 'embedding' is the word's code alone: target_centering = 'token' would "
              "make every target zero")
        check(not self.share_embeddings or self.uses_ema,
              "share_embeddings needs a target encoder of its own (anti_collapse ema or "
              f"vicreg); under {self.anti_collapse!r} the context encoder makes the targets")
        check(self.sigreg_directions >= 1,
              f"sigreg_directions must be >= 1, got {self.sigreg_directions}")
        check(self.sigreg_samples >= 1,
              f"sigreg_samples must be >= 1, got {self.sigreg_samples}")
        check(self.sigreg_weight < 1, f"sigreg_weight must be < 1, got {self.sigreg_weight}")
        for name in ("sigreg_weight", "vicreg_variance_weight", "vicreg_covariance_weight",
                     "jepa_weight", "document_weight"):
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


def prediction_loss(predictions: Tensor, targets: Tensor, kind: LossKind,
                    valid: Tensor | None = None, temperature: float = 0.1) -> Tensor:
    """Per-token loss (V, P) of predictions and targets (V, P, D): smooth L1 and L2 averaged
    over the embedding, 1 − cosine, or ``infonce``.

    ``infonce`` scores each prediction as a choice among the batch's targets (where ``valid``
    (V, P)): the cross-entropy of its own target under a softmax over cosine similarities /
    ``temperature`` (CPC; wav2vec 2.0, Baevski et al. 2020, §3.2, with the other targets as
    distractors). A regression's best guess under uncertainty is the mean of the plausible
    targets, which keeps little of any one of them; a choice among candidates has no such cap.
    """
    if kind == "smooth_l1":
        return F.smooth_l1_loss(predictions, targets, reduction="none").mean(-1)
    if kind == "l2":
        return F.mse_loss(predictions, targets, reduction="none").mean(-1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(predictions, targets, dim=-1)
    if kind == "distill":
        raise ValueError("distill scores through the model's prototypes (JEPA.score)")
    if valid is None:
        raise ValueError("infonce needs the valid targets: its candidates")
    shape = valid.shape
    p = F.normalize(predictions.flatten(0, -2).float(), dim=-1)  # (M, D)
    t = F.normalize(targets.flatten(0, -2).float(), dim=-1)
    # M is every slot, a packed row's context slots too: they are masked out as candidates,
    # but the (M, M) matrix is built whole, so memory grows with the square of the slots
    # padding slots are no candidates; a finite fill keeps a batch without targets finite
    logits = (p @ t.T / temperature).masked_fill(~valid.flatten()[None, :], -1e4)  # (M, M)
    return (torch.logsumexp(logits, dim=-1) - torch.diagonal(logits)).view(shape)


def segment_means(x: Tensor, segment: Tensor) -> tuple[Tensor, Tensor]:
    """Each slot's mean of x (N, T, D), in float32, over the slots of its row that share its
    ``segment`` id (N, T), and how many slots that is (N, T); slots with ids < 0 (padding)
    count in no mean. The one segment sum behind ``instance_norm`` and ``span_means``."""
    n, t, d = x.shape
    ids = (torch.arange(n, device=x.device)[:, None] * t + segment.clamp(min=0)).flatten()
    weight = (segment >= 0).flatten().float()[:, None]
    sums = x.new_zeros(n * t, d, dtype=torch.float32).index_add_(
        0, ids, x.flatten(0, 1).float() * weight)
    counts = weight.new_zeros(n * t, 1).index_add_(0, ids, weight)
    return (sums / counts.clamp(min=1))[ids].view(n, t, d), counts[ids].view(n, t)


def instance_norm(h: Tensor, segment: Tensor, eps: float = 1e-5) -> Tensor:
    """Each feature of h (N, T, D) centred and scaled over the tokens of its sequence: the
    tokens of a row with the same ``segment`` id (N, T); ids < 0 (padding) are left out of the
    statistics. ``F.instance_norm`` on one unpadded document; padded and packed rows alike."""
    mean, _ = segment_means(h, segment)
    centred = h.float() - mean
    var, _ = segment_means(centred.square(), segment)
    return centred * torch.rsqrt(var + eps)


def token_centred(h: Tensor, tokens: Tensor, valid: Tensor, vocab_size: int,
                  eps: float = 1e-6) -> Tensor:
    """h (N, T, D) less, at each token, the mean of h over the tokens (N, T) of the same id
    where ``valid`` (N, T), in float32, then scaled to a unit mean square over the valid
    tokens: what the context adds to each word's average target."""
    d = h.shape[-1]
    x, ids = h.float().flatten(0, 1), tokens.flatten()
    weight = valid.flatten().float()[:, None]
    sums = x.new_zeros(vocab_size, d).index_add_(0, ids, x * weight)
    counts = weight.new_zeros(vocab_size, 1).index_add_(0, ids, weight)
    residual = x - (sums / counts.clamp(min=1))[ids]
    mean_square = (residual.square() * weight).sum() / (weight.sum() * d).clamp(min=1)
    return (residual * torch.rsqrt(mean_square + eps)).view(h.shape)


def span_means(x: Tensor, span: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each slot's span mean of x (V, P, D), where ``span`` (V, P) numbers each view's spans
    (packed one after another; -1: padding); also which slots start a span (V, P) and each
    slot's span length (V, P)."""
    means, counts = segment_means(x, span)
    previous = F.pad(span, (1, 0), value=-1)[:, :-1]
    first = (span >= 0) & (span != previous)
    return means, first, counts


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
