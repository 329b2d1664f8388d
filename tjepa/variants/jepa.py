"""The JEPA with another target or loss: ``tjepa.jepa.JEPA`` with its two hooks,
``target_features`` and ``score``, chosen by ``objective.target`` and ``objective.loss``.

    target = "last" | "blocks" | "embedding"   (tjepa.variants.targets)
    loss   = "smooth_l1" | "distill"           (tjepa.variants.distill)
    share_embeddings = true                    the target encoder reads the context
                                               encoder's token table (data2vec's
                                               ``ema_transformer_layers_only``)

With ``share_embeddings`` the EMA moves only the blocks, and the targets follow learned word
embeddings, not an average of their random start.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tjepa.attention import AttentionMask
from tjepa.jepa import JEPA
from tjepa.model import ModelConfig
from tjepa.objective import ObjectiveConfig
from tjepa.variants.distill import Prototypes
from tjepa.variants.targets import block_targets, embedding_targets


class VariantJEPA(JEPA):
    """A JEPA whose targets and loss the objective's variant keys choose."""

    def __init__(self, config: ModelConfig, objective: ObjectiveConfig):
        super().__init__(config, objective)
        o = self.objective
        if o.share_embeddings:  # one table, trained by the context encoder
            self.target_encoder.embed = self.context_encoder.embed
        if o.loss == "distill":  # the predictions read as distributions
            self.prototypes = Prototypes(config.dim, o.prototypes, o.temperature,
                                         o.teacher_temperature, o.centre_momentum)

    def target_features(self, tokens: Tensor, positions: Tensor, segment: Tensor,
                        mask: AttentionMask, encoded: Tensor | None = None) -> Tensor:
        """``JEPA.target_features`` for ``target = "last"``; data2vec's block average or the
        hidden word's embedding otherwise (these ignore ``encoded``)."""
        o = self.objective
        if o.target == "embedding":
            return embedding_targets(self.target_encoder, tokens)
        if o.target == "blocks":
            return block_targets(self.target_encoder, tokens, positions, segment, mask,
                                 o.target_blocks or self.config.depth, o.target_block_norm)
        return super().target_features(tokens, positions, segment, mask, encoded)

    def score(self, predictions: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        """``JEPA.score``, or the distillation's cross-entropy per token (V, P); its teacher's
        centre moves in training only (not in validation or the monitor)."""
        if self.objective.loss != "distill":
            return super().score(predictions, targets, valid)
        training = self.training and torch.is_grad_enabled()
        return self.prototypes.loss(predictions, targets, valid if training else None)

    @torch.no_grad()
    def update_target(self, momentum: float | Tensor) -> None:
        """``JEPA.update_target``, and the teacher's prototypes with it."""
        super().update_target(momentum)
        if self.objective.loss == "distill":
            self.prototypes.update_teacher(momentum)
