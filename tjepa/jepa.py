"""The JEPA: targets from the target encoder, predictions from the context, one loss.

    target encoder (EMA, no grad)  : whole document         → target features → gather at targets
    context encoder                : context tokens only    → predictor (+ mask tokens) → loss

``JEPA.forward`` takes a batch of views (``tjepa.masking``), padded or packed
(``tjepa.packing``), and returns the summed prediction loss, the number of targets and the
anti-collapse regularizer (``tjepa.objective``); the training step (``tjepa.step``) normalizes
them and updates the target encoder with ``update_target``.

This is the JEPA the walkthrough teaches (I-JEPA's recipe on text): the predictor regresses
the target encoder's last layer, layer-normed, by smooth L1. Other targets, losses and
students override ``target_features``, ``score`` or ``predict`` in ``tjepa.variants``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from tjepa.attention import AttentionMask, attention_groups, attention_mask
from tjepa.masking import MaskedBatch
from tjepa.model import Encoder, Learner, ModelConfig, Predictor, init_weights
from tjepa.objective import ObjectiveConfig, anti_collapse_term, prediction_loss
from tjepa.packing import PackedBatch


class JEPA(Learner):
    """The three networks of a JEPA and the forward pass that scores one batch.

    ``objective`` chooses the anti-collapse mechanism (``tjepa.objective``); the default is
    an EMA target encoder.
    """

    can_predict = True

    def __init__(self, config: ModelConfig, objective: ObjectiveConfig | None = None):
        super().__init__()
        self.config = config
        self.objective = objective or ObjectiveConfig()
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
        return self.objective.uses_ema

    def forward(self, batch: MaskedBatch | PackedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Sum of per-token losses over real targets, their number, and the anti-collapse
        regularizer of this batch (0 for ``ema``); all 0-d. Padded and packed batches give the
        same result (``tjepa.packing``)."""
        predict = self.predict_packed if isinstance(batch, PackedBatch) else self.predict
        predictions, targets, context = predict(batch, return_context=True)
        valid = batch.target_valid
        per_token = self.score(predictions, targets, valid)
        regularizer = self.regularizer(context, batch.context_valid)
        return (per_token * valid).sum(), valid.sum(), regularizer

    def losses_and_states(self, batch: MaskedBatch) -> tuple[Tensor, Tensor]:
        """The loss at each target (V, P) — how far the prediction from the context lands
        from the target encoder's view of the hidden token, the JEPA's energy there — and
        the predictions themselves (V, P, D)."""
        predictions, targets = self.predict(batch)
        return self.score(predictions, targets, batch.target_valid), predictions

    def predict(self, batch: MaskedBatch, return_context: bool = False):
        """Predictions and targets at the packed target positions: both (V, P, D) (and the
        context embeddings (V, C, D) when ``return_context``)."""
        backend = self.config.attention
        targets = self.targets(batch)  # (V, P, D)
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
        targets = self.targets(batch)  # (Rp, L, D)
        context_groups = torch.where(batch.context_valid, 0, -1)
        context = self.context_encoder(
            batch.context_tokens, batch.context_positions,
            attention_mask(context_groups, backend, batch.context_sequence))  # (Rc, L, D)
        predictions = self.predictor.forward_packed(
            context.flatten(0, 1), batch.predictor_source, batch.target_valid,
            batch.predictor_positions,
            attention_mask(batch.predictor_group, backend, batch.predictor_sequence))
        return (predictions, targets, context) if return_context else (predictions, targets)

    def targets(self, batch: MaskedBatch | PackedBatch) -> Tensor:
        """What the predictor regresses (``target_features``) at the target positions:
        (V, P, D), or (Rp, L, D) at every predictor slot of packed rows."""
        with self._target_grad():
            if isinstance(batch, PackedBatch):
                segment = batch.document_sequence  # (Rd, L): which document, -1 past the end
                mask = attention_mask(torch.where(segment >= 0, 0, -1), self.config.attention,
                                      segment)
                h = self.target_features(batch.document_tokens, batch.document_positions,
                                         segment, mask)
                return h.flatten(0, 1)[batch.predictor_target]
            h = self.document_targets(batch.tokens, batch.lengths)  # (B, T, D)
            return h[batch.document[:, None], batch.target_positions]

    def document_targets(self, tokens: Tensor, lengths: Tensor,
                         encoded: Tensor | None = None) -> Tensor:
        """``target_features`` of whole padded documents (B, T) → (B, T, D): what the
        predictor regresses at every token; ``encoded`` as there."""
        positions, segment = document_layout(tokens, lengths)
        return self.target_features(tokens, positions, segment,
                                    attention_mask(segment, self.config.attention), encoded)

    def target_features(self, tokens: Tensor, positions: Tensor, segment: Tensor,
                        mask: AttentionMask, encoded: Tensor | None = None) -> Tensor:
        """The target encoder's view of whole documents, layer-normed (I-JEPA, data2vec):
        tokens (N, T) → (N, T, D). The norm fixes the targets' scale, so the loss cannot fall
        by shrinking them. ``segment`` (N, T) names each token's document (-1: padding).
        ``encoded`` (N, T, D): the target encoder's output on these tokens, when the caller
        has it already (the monitor), instead of a second pass."""
        h = self.target_encoder(tokens, positions, mask) if encoded is None else encoded
        return F.layer_norm(h, h.shape[-1:])

    @torch.no_grad()
    def constant_loss_sum(self, batch: MaskedBatch | PackedBatch) -> Tensor:
        """The summed loss of one constant prediction, the targets' mean, at every target: what
        the loss is to beat. Far below the loss of predicting zeros when the targets have
        collapsed to a few directions."""
        targets = self.targets(batch)  # the target encoder alone: no context, no predictor
        valid = batch.target_valid
        weight = valid.float()[..., None]
        mean = (targets.float() * weight).flatten(0, -2).sum(0) / weight.sum().clamp(min=1)
        per_token = self.score(mean.expand_as(targets), targets, valid)
        return (per_token * valid).sum()

    def score(self, predictions: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        """The per-token loss (V, P), in float32, of predictions and targets (V, P, D):
        ``prediction_loss``, smooth L1. ``valid`` (V, P) marks the real targets (a loss that
        compares a prediction with other targets needs to know which)."""
        return prediction_loss(predictions.float(), targets.float())

    def _target_grad(self) -> torch.set_grad_enabled:
        """Gradients through the targets only for SIGReg without stop-gradient."""
        target_grad = not (self.uses_ema or self.objective.target_stop_gradient)
        return torch.set_grad_enabled(target_grad and torch.is_grad_enabled())

    def regularizer(self, embeddings: Tensor, valid: Tensor) -> Tensor:
        """The anti-collapse term on the context embeddings (..., D) where ``valid`` (...)."""
        return anti_collapse_term(self.objective, embeddings, valid)

    @torch.no_grad()
    def update_target(self, momentum: float | Tensor) -> None:
        """target ← momentum · target + (1 − momentum) · context, in one foreach kernel."""
        if not self.uses_ema:
            return
        if self._ema_pairs is None:  # built once: the same Parameter objects live on after .to()
            pairs = [(t, o) for t, o in zip(self.target_encoder.parameters(),
                                            self.context_encoder.parameters(), strict=True)
                     if t is not o]  # a table shared with the context encoder has no EMA
            self._ema_pairs = ([t for t, _ in pairs], [o for _, o in pairs])
        targets, online = self._ema_pairs
        torch._foreach_lerp_(targets, online, 1.0 - momentum)


def document_layout(tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Padded whole documents (B, T): each token's position (B, T) and its segment (B, T): 0,
    one document per row, or -1 past ``lengths`` (padding)."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return positions, torch.where(positions < lengths[:, None], 0, -1)


def encode_documents(encoder: Encoder, tokens: Tensor, lengths: Tensor,
                     backend: str = "sdpa") -> Tensor:
    """An encoder on whole documents (B, T) with padding masked: (B, T, D)."""
    positions, segment = document_layout(tokens, lengths)
    return encoder(tokens, positions, attention_mask(segment, backend))


def mean_pool(h: Tensor, lengths: Tensor) -> Tensor:
    """Mean over each document's real tokens of (B, T, D) with padding past ``lengths``: (B, D).
    """
    valid = torch.arange(h.shape[1], device=h.device) < lengths[:, None]
    return (h * valid[..., None]).sum(1) / lengths[:, None]
