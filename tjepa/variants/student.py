"""data2vec's and iBOT's student: the encoder reads the masked document itself
(``objective.student = "encoder"``).

    target encoder (EMA, no grad) : whole document                    → targets at the masks
    context encoder               : document, [MASK] at each target   → 2-layer head → loss

In I-JEPA (``tjepa.jepa``) the context encoder reads the context tokens alone and a predictor
does the guessing: it is the predictor that must work out, from the context, what stood at
each target. In data2vec (Baevski et al. 2022; fairseq's ``data2vec_text``: BERT's masked
input, a two-layer regression head, ``head_layers: 2``) the student is the encoder itself, as
in a masked LM: it reads the document with a ``[MASK]`` id at each target position, all
positions attending to all, and its outputs at those slots, through a small head, predict the
EMA teacher's targets. The inference from context then happens inside the encoder whose
outputs the probes read — which is what the masked LM, with the same input, learns from.
With ``objective.loss = "distill"`` this student is iBOT's masked image modelling on text.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from tjepa.attention import attention_mask
from tjepa.masking import MaskedBatch
from tjepa.mlm import MaskedInput
from tjepa.model import ModelConfig, init_weights
from tjepa.objective import ObjectiveConfig
from tjepa.variants.jepa import VariantJEPA


def regression_head(dim: int) -> nn.Sequential:
    """fairseq data2vec_text's head of two layers: dim → 2·dim → GELU → dim."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class EncoderStudentJEPA(VariantJEPA):
    """A JEPA whose context encoder reads BERT's input (``MaskedInput``) and whose ``head``
    predicts the targets from its outputs at the ``[MASK]`` slots; no predictor. Targets,
    losses, the EMA and the anti-collapse term (on the encoder's outputs at the context slots)
    are the JEPA's. The ``[MASK]`` id is one row past the bins' vocabulary in both encoders'
    tables; the target encoder never reads it. Takes padded batches only."""

    def __init__(self, config: ModelConfig, objective: ObjectiveConfig):
        super().__init__(replace(config, vocab_size=config.vocab_size + 1), objective)
        self.config = config
        self.mask_id = config.vocab_size
        del self.predictor  # the encoder predicts
        self.head = regression_head(config.dim)
        init_weights(self.head)

    def forward(self, batch: MaskedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``JEPA.forward`` on BERT's input."""
        predictions, targets, context = self.predict(batch, return_context=True)
        valid = batch.target_valid
        per_token = self.score(predictions, targets, valid)
        regularizer = self.regularizer(context, batch.context_valid)
        return (per_token * valid).sum(), valid.sum(), regularizer

    def predict(self, batch: MaskedBatch, return_context: bool = False):
        """Predictions and targets at the target positions: both (V, P, D) (and the encoder's
        outputs at the context slots (V, C, D) when ``return_context``)."""
        masked = MaskedInput.of(batch, self.mask_id)
        with self._target_grad():
            documents = self.document_targets(batch.tokens, batch.lengths)  # (B, T, D)
        h = self.context_encoder(masked.tokens, masked.positions,
                                 attention_mask(masked.groups, self.config.attention))
        targets = documents[batch.document[:, None], batch.target_positions]  # (V, P, D)
        predictions = self.head(h[:, masked.n_context:])  # (V, P, D)
        context = h[:, :masked.n_context]
        return (predictions, targets, context) if return_context else (predictions, targets)
