"""``objective.name = "mlm+jepa"``: the masked LM's loss plus ``jepa_weight`` × the JEPA's, on
one encoder (LLM-JEPA's form: Huang, LeCun and Balestriero 2025: a language model's loss plus
λ times an embedding prediction loss), to measure what the JEPA term adds to a masked LM.

One pass of the encoder over BERT's input (``tjepa.mlm.MaskedInput``) gives both: its outputs
at the ``[MASK]`` slots feed the token head, and its outputs at the context slots — which saw
only the targets' positions, never their tokens — feed the predictor, which regresses the EMA
target encoder's targets as the JEPA does (its anti-collapse term included).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tjepa.attention import attention_groups, attention_mask
from tjepa.masking import MaskedBatch
from tjepa.mlm import MaskedInput, frequency_loss_sum
from tjepa.model import ModelConfig, init_weights
from tjepa.objective import ObjectiveConfig
from tjepa.variants.jepa import VariantJEPA


class MaskedLMJEPA(VariantJEPA):
    """The masked LM's encoder and token head, and a JEPA's predictor and EMA target encoder
    beside them. The probes and the monitor read the encoders as they read the JEPA's."""

    def __init__(self, config: ModelConfig, objective: ObjectiveConfig):
        # one more row in the embedding table: the [MASK] id, one past the bins' vocabulary
        super().__init__(replace(config, vocab_size=config.vocab_size + 1), objective)
        self.config = config
        self.mask_id = config.vocab_size
        self.head = nn.Linear(config.dim, config.vocab_size)
        init_weights(self.head)

    def forward(self, batch: MaskedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Summed (cross-entropy + ``jepa_weight`` × prediction loss) over the real targets,
        their number, and the anti-collapse term on the context embeddings."""
        per_token, _, context = self.encode(batch)
        valid = batch.target_valid
        regularizer = self.regularizer(context, batch.context_valid)
        return (per_token * valid).sum(), valid.sum(), regularizer

    def losses_and_states(self, batch: MaskedBatch) -> tuple[Tensor, Tensor]:
        """Cross-entropy + ``jepa_weight`` × prediction loss at each target (V, P), and the
        encoder's output at the ``[MASK]`` slots (V, P, D), which the token head reads."""
        per_token, states, _ = self.encode(batch)
        return per_token, states

    def encode(self, batch: MaskedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """One pass over BERT's input: the per-target loss (V, P), the encoder's outputs at
        the ``[MASK]`` slots (V, P, D) and at the context slots (V, C, D)."""
        masked = MaskedInput.of(batch, self.mask_id)
        targets = self.targets(batch)  # (V, P, D), from the whole documents
        backend = self.config.attention
        h = self.context_encoder(masked.tokens, masked.positions,
                                 attention_mask(masked.groups, backend))  # (V, C + P, D)
        context, hidden = h[:, :masked.n_context], h[:, masked.n_context:]
        logits = self.head(hidden)
        cross_entropy = F.cross_entropy(logits.flatten(0, 1).float(), masked.truth.flatten(),
                                        reduction="none").view_as(masked.truth)
        predictions = self.predictor(context, batch.context_positions, batch.target_positions,
                                     attention_mask(attention_groups(batch), backend))
        regression = self.score(predictions, targets, batch.target_valid)
        return cross_entropy + self.objective.jepa_weight * regression, hidden, context

    @torch.no_grad()
    def constant_loss_sum(self, batch: MaskedBatch) -> Tensor:
        """Both yardsticks, weighed as the loss weighs them: the batch's target frequencies
        and the targets' mean."""
        return (frequency_loss_sum(batch, self.config.vocab_size)
                + self.objective.jepa_weight * super().constant_loss_sum(batch))
