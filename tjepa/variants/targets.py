"""Targets other than the last layer: data2vec's average of the top blocks, and the hidden
word's input embedding (``objective.target``).

- ``blocks`` (data2vec, Baevski et al. 2022, §3.3): the feed-forward outputs (before the
  residual add) of the top ``target_blocks`` blocks (0: all), each normalized by
  ``target_block_norm`` — ``instance``, each feature over the document's tokens, or
  ``layer``, each token over its features — then averaged. The residual stream carries each
  token's input embedding up to the last layer; a block's own output does not, so these
  targets are less a code of the hidden word and more what the context made of it.
- ``embedding``: the target encoder's input embedding of the hidden token, layer-normed: the
  word's code and nothing the context made of it (the target token share is 1 by
  construction), the bottom end of data2vec's choice of target layer. Against ``last`` it
  measures what the target encoder's blocks add to a JEPA's target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tjepa.attention import AttentionMask
from tjepa.model import Encoder


def block_targets(encoder: Encoder, tokens: Tensor, positions: Tensor, segment: Tensor,
                  mask: AttentionMask, top: int, norm: str) -> Tensor:
    """data2vec's targets of tokens (N, T): the mean of the ``top`` last blocks' normed
    feed-forward outputs, (N, T, D); ``segment`` (N, T) names each token's document (-1:
    padding), over which ``instance`` norm takes its statistics."""
    layers = encoder.mlp_outputs(tokens, positions, mask, top)  # top × (N, T, D)
    if norm == "instance":
        layers = [instance_norm(h, segment) for h in layers]
    else:
        layers = [F.layer_norm(h.float(), h.shape[-1:]) for h in layers]
    return torch.stack(layers).mean(0)


def embedding_targets(encoder: Encoder, tokens: Tensor) -> Tensor:
    """The encoder's input embedding of each token (N, T), layer-normed: (N, T, D)."""
    h = encoder.embed(tokens).float()
    return F.layer_norm(h, h.shape[-1:])


def segment_means(x: Tensor, segment: Tensor) -> tuple[Tensor, Tensor]:
    """Each slot's mean of x (N, T, D), in float32, over the slots of its row that share its
    ``segment`` id (N, T), and how many slots that is (N, T); slots with ids < 0 (padding)
    count in no mean."""
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
