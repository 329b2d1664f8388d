"""data2vec's student: the encoder reads the masked document itself (``objective.student =
"encoder"``).

    target encoder (EMA, no grad) : whole document                    → targets at the masks
    context encoder               : document, [MASK] at each target   → 2-layer head → loss

In I-JEPA (``tjepa.jepa``) the context encoder reads the context tokens alone and a predictor
does the guessing: it is the predictor that must work out, from the context, what stood at
each target. In data2vec (Baevski et al. 2022; fairseq's ``data2vec_text``: BERT's masked
input, a two-layer regression head, ``head_layers: 2``) the student is the encoder itself, as
in a masked LM: it reads the document with a ``[MASK]`` id at each target position, all
positions attending to all, and its outputs at those slots, through a small head, regress the
EMA teacher's targets. The inference from context then happens inside the encoder whose
outputs the probes read — which is what the masked LM, with the same input, learns from.

With ``objective.loss = "distill"`` this student is iBOT's masked image modelling on text;
``objective.document_weight`` adds iBOT's other loss, the [CLS] self-distillation, on the
document: the student's mean output over the masked document, through the same head, is
read against its own prototypes and scored against the teacher's distribution for the whole
document's mean target (``document_loss``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NoReturn

import torch
from torch import Tensor, nn

from tjepa.attention import attention_mask
from tjepa.distill import Prototypes
from tjepa.jepa import JEPA, mean_pool, target_spans
from tjepa.masking import MaskedBatch
from tjepa.mlm import MaskedInput
from tjepa.model import ModelConfig, init_weights
from tjepa.objective import ObjectiveConfig


def regression_head(dim: int) -> nn.Sequential:
    """fairseq data2vec_text's head of two layers: dim → 2·dim → GELU → dim."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class Data2VecJEPA(JEPA):
    """A JEPA whose context encoder reads BERT's input (``MaskedInput``) and whose ``head``
    regresses the targets from its outputs at the ``[MASK]`` slots; no predictor. Targets,
    losses, the EMA and the anti-collapse term (on the encoder's outputs at the context slots)
    are the JEPA's. The ``[MASK]`` id is one row past the bins' vocabulary in both encoders'
    tables; the target encoder never reads it."""

    def __init__(self, config: ModelConfig, objective: ObjectiveConfig | None = None):
        objective = objective or ObjectiveConfig(student="encoder")
        super().__init__(replace(config, vocab_size=config.vocab_size + 1), objective)
        self.config = config
        self.mask_id = config.vocab_size
        del self.predictor  # the encoder predicts
        self.head = regression_head(config.dim)
        init_weights(self.head)
        o = self.objective
        if o.document_weight:  # iBOT's student: one head, a last layer of its own for [CLS]
            self.document_prototypes = Prototypes(config.dim, o.prototypes, o.temperature,
                                                  o.teacher_temperature, o.centre_momentum)

    def forward(self, batch: MaskedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``JEPA.forward``; with ``objective.document_weight`` the third term also holds
        λ × the batch's mean ``document_loss`` (a mean per batch, as the regularizer is)."""
        h, masked, documents = self.encode(batch)
        predictions = self.head(h[:, masked.n_context:])  # (V, P, D)
        targets = documents[batch.document[:, None], batch.target_positions]  # (V, P, D)
        valid = batch.target_valid
        per_token = self.score(predictions, targets, target_spans(batch))
        extra = self.regularizer(h[:, :masked.n_context], batch.context_valid)
        if self.objective.document_weight:
            pooled = mean_pool(documents.float(), batch.lengths)[batch.document]  # (V, D)
            extra = extra + self.objective.document_weight * self.document_loss(
                h, masked.groups >= 0, pooled).mean()
        return (per_token * valid).sum(), valid.sum(), extra

    def encode(self, batch: MaskedBatch) -> tuple[Tensor, MaskedInput, Tensor]:
        """The student's outputs on BERT's input (V, C + P, D), that input, and the
        teacher's targets at every token of the whole documents (B, T, D)."""
        masked = MaskedInput.of(batch, self.mask_id)
        with self._target_grad():
            documents = self.document_targets(batch.tokens, batch.lengths)  # (B, T, D)
        h = self.context_encoder(masked.tokens, masked.positions,
                                 attention_mask(masked.groups, self.config.attention))
        return h, masked, documents

    def predict(self, batch: MaskedBatch, return_context: bool = False):
        """Predictions and targets at the target positions: both (V, P, D) (and the encoder's
        outputs at the context slots (V, C, D) when ``return_context``)."""
        h, masked, documents = self.encode(batch)
        targets = documents[batch.document[:, None], batch.target_positions]  # (V, P, D)
        predictions = self.head(h[:, masked.n_context:])  # (V, P, D)
        context = h[:, :masked.n_context]
        return (predictions, targets, context) if return_context else (predictions, targets)

    def document_loss(self, h: Tensor, slots: Tensor, teacher: Tensor) -> Tensor:
        """iBOT's [CLS] loss per view (V,): the head on the student's mean output over its
        real ``slots`` (V, C + P) of the masked document, against ``teacher`` (V, D), the
        mean target of the view's whole document, over the document prototypes (their own
        centre, as iBOT keeps one for [CLS] and one for the patches). The centre moves only
        in training. The means are taken in float32, as bf16 would round the counts."""
        weight = slots.float()[..., None]
        student = self.head((h.float() * weight).sum(1) / weight.sum(1).clamp(min=1))  # (V, D)
        training = self.training and torch.is_grad_enabled()
        in_training = torch.ones_like(slots[:, 0]) if training else None
        return self.document_prototypes.loss(student, teacher, in_training)

    @torch.no_grad()
    def update_target(self, momentum: float | Tensor) -> None:
        """``JEPA.update_target``, and the document prototypes' teacher with it."""
        super().update_target(momentum)
        if self.objective.document_weight:
            self.document_prototypes.update_teacher(momentum)

    def predict_packed(self, batch, return_context: bool = False) -> NoReturn:
        raise TypeError("objective.student = 'encoder' takes padded batches "
                        "(train.pack_length = 0)")
