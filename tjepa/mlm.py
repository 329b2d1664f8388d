"""The masked-LM baseline: the same encoder, trained to name the hidden tokens instead of
predicting their embeddings (``objective.name = "mlm"``).

A skeptic's first question of any JEPA result is what the obvious objective would have learned
with the same encoder, data, masks, steps and batch. Here that objective is BERT's: the encoder
reads the context tokens and a ``[MASK]`` token at every target position (all attending to
all), and a linear head scores the vocabulary there; the loss is the cross-entropy of the
hidden tokens. It takes the JEPA's batches (``MaskedBatch``, the run's UL2 masks) and returns
what ``JEPA.forward`` returns, so the same training step, loop, monitor and probes run it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tjepa.attention import attention_mask
from tjepa.masking import MaskedBatch
from tjepa.model import Encoder, Learner, ModelConfig, init_weights
from tjepa.objective import ObjectiveConfig


@dataclass
class MaskedInput:
    """BERT's input for a batch of views: each view's context tokens, then the ``[MASK]`` id
    at each of its target positions, all attending to all; the true ids at the targets."""

    tokens: Tensor  # (V, C + P)
    positions: Tensor  # (V, C + P)
    groups: Tensor  # (V, C + P): 0 for real slots, -1 for padding
    truth: Tensor  # (V, P)
    n_context: int  # C: the targets' slots start here

    @classmethod
    def of(cls, batch: MaskedBatch, mask_id: int) -> MaskedInput:
        if not isinstance(batch, MaskedBatch):
            raise TypeError("the masked-LM objectives take padded batches (train.pack_length "
                            "= 0)")
        document = batch.document[:, None]
        context_tokens = batch.tokens[document, batch.context_positions]
        truth = batch.tokens[document, batch.target_positions]
        tokens = torch.cat([context_tokens, torch.full_like(truth, mask_id)], dim=1)
        positions = torch.cat([batch.context_positions, batch.target_positions], dim=1)
        valid = torch.cat([batch.context_valid, batch.target_valid], dim=1)
        return cls(tokens, positions, torch.where(valid, 0, -1), truth, context_tokens.shape[1])


def frequency_loss_sum(batch: MaskedBatch, vocab_size: int) -> Tensor:
    """The summed cross-entropy of the best constant guess, the batch's own target
    frequencies: the masked LM's yardstick."""
    truth = batch.tokens[batch.document[:, None], batch.target_positions]
    counts = torch.zeros(vocab_size, device=truth.device)
    counts.scatter_add_(0, truth.flatten(), batch.target_valid.flatten().float())
    p = counts / counts.sum().clamp(min=1)
    return -(counts * p.clamp(min=1e-12).log()).sum()


class MaskedLM(Learner):
    """An encoder with a ``[MASK]`` id (the last row of its embedding table) and a token head.

    ``context_encoder`` and ``target_encoder`` name the one encoder, as the probes and the
    monitor read them; there is no target encoder to update, and no embedding it regresses.
    """

    def __init__(self, config: ModelConfig, objective: ObjectiveConfig | None = None):
        super().__init__()
        self.config = config
        self.objective = objective or ObjectiveConfig(name="mlm")
        self.mask_id = config.vocab_size  # one past the bins' vocabulary
        self.context_encoder = Encoder(replace(config, vocab_size=config.vocab_size + 1))
        self.head = nn.Linear(config.dim, config.vocab_size)
        init_weights(self)
        self.target_encoder = self.context_encoder

    def forward(self, batch: MaskedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Summed cross-entropy of the hidden tokens, their number, and 0 (no regularizer)."""
        per_token, _ = self.losses_and_states(batch)
        valid = batch.target_valid
        return (per_token * valid).sum(), valid.sum(), per_token.new_zeros(())

    def losses_and_states(self, batch: MaskedBatch) -> tuple[Tensor, Tensor]:
        """The cross-entropy of each hidden token (V, P), in float32, and the encoder's output
        at the ``[MASK]`` slots (V, P, D), which the token head reads."""
        masked = MaskedInput.of(batch, self.mask_id)
        h = self.context_encoder(masked.tokens, masked.positions,
                                 attention_mask(masked.groups, self.config.attention))
        states = h[:, masked.n_context:]
        logits = self.head(states)  # (V, P, vocab)
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), masked.truth.flatten(),
                                    reduction="none").view_as(masked.truth)
        return per_token, states

    @torch.no_grad()
    def constant_loss_sum(self, batch: MaskedBatch) -> Tensor:
        """The summed loss of the best constant guess: the batch's own target frequencies."""
        return frequency_loss_sum(batch, self.config.vocab_size)
