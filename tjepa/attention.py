"""Who may attend to whom: the JEPA's attention rule, and the masks that carry it.

Every token of a network's input gets one integer *group*:

    0         context (what the context encoder saw)
    span + 1  a target token of that span (a mask token in the predictor)
    -1        padding

and the rule reads off the groups alone (``may_attend``):

- context tokens attend to context tokens only, so the context never sees a target;
- a target token attends to the context and to the tokens of its own span, so the spans of a
  view share one predictor input without seeing each other's answers;
- padding attends to itself alone (so no softmax row is empty), and nobody attends to padding.

An encoder's input is the special case with no targets: every real token is group 0. Rows that
hold several sequences end to end (``tjepa.packing``) add a sequence id per token, and nothing
crosses between sequences.

``attention_mask`` turns groups into what the networks consume, once per batch on its device:
a dense boolean mask for SDPA (any device), or a ``flex_attention`` block mask (CUDA,
compiled), which skips fully masked blocks and never materializes the scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

if TYPE_CHECKING:
    from tjepa.masking import MaskedBatch

AttentionBackend = Literal["sdpa", "flex"]
AttentionMask = Tensor | BlockMask  # (N, 1, S, S) bool for SDPA, or a flex BlockMask


def may_attend(query_group: Tensor, key_group: Tensor, same_token: Tensor,
               same_sequence: Tensor | bool = True) -> Tensor:
    """The rule, elementwise (broadcasting for SDPA masks, scalar-wise in a flex mask_mod).
    ``same_sequence``: whether the two tokens belong to one sequence, for rows that hold
    several end to end (``tjepa.packing``); nothing crosses between sequences."""
    shared = (key_group == 0) & (query_group >= 0)  # everybody sees the context
    own_span = (query_group == key_group) & (query_group > 0)
    allowed = shared | own_span | same_token  # padding sees itself, so no softmax row is empty
    return allowed & same_sequence


def attention_groups(batch: MaskedBatch) -> Tensor:
    """The group of each predictor input token, context first then packed targets: (V, C + P).
    """
    context = torch.where(batch.context_valid, 0, -1)
    targets = torch.where(batch.target_valid, batch.target_span + 1, -1)
    return torch.cat([context, targets], dim=1)


def dense_mask(groups: Tensor, sequence: Tensor | None = None) -> Tensor:
    """The rule as a dense boolean mask for SDPA from groups (N, S): (N, 1, S, S), True where
    allowed. ``sequence`` (N, S) keeps packed sequences apart."""
    index = torch.arange(groups.shape[1], device=groups.device)
    same_sequence = True if sequence is None else sequence[:, :, None] == sequence[:, None, :]
    allowed = may_attend(groups[:, :, None], groups[:, None, :], index[:, None] == index[None, :],
                         same_sequence)
    return allowed[:, None]


def attention_mask(groups: Tensor, backend: AttentionBackend = "sdpa",
                   sequence: Tensor | None = None) -> AttentionMask:
    """The mask for groups (N, S), built on their device once per batch, shared by all layers.
    ``sequence`` (N, S) keeps packed sequences apart (``tjepa.packing``).

    ``flex`` falls back to SDPA on the CPU when gradients are needed: flex_attention has no CPU
    backward. Both follow ``may_attend``, and tests check they agree.
    """
    if backend == "flex" and groups.device.type == "cpu" and torch.is_grad_enabled():
        backend = "sdpa"
    if backend == "sdpa":
        return dense_mask(groups, sequence)

    n, s = groups.shape
    if sequence is None:
        def mask_mod(b, h, q, k):
            return may_attend(groups[b, q], groups[b, k], q == k)

        # compiled on CUDA, so the block mask is built without materializing (N, S, S)
        return create_block_mask(mask_mod, n, None, s, s, device=groups.device,
                                 _compile=groups.device.type == "cuda")

    def packed_mask_mod(b, h, q, k):
        return may_attend(groups[b, q], groups[b, k], q == k, sequence[b, q] == sequence[b, k])

    return packed_block_mask(groups, sequence, packed_mask_mod)


def packed_block_mask(groups: Tensor, sequence: Tensor, mask_mod, block: int = 128) -> BlockMask:
    """The flex block mask of packed rows (N, S), read off the layout instead of evaluating
    ``mask_mod`` on every (query, key) pair as ``create_block_mask`` does.

    Sequences lie in one piece each, so a block of 128 slots holds a run of consecutive
    segments. A (query block, key block) pair is visited when the two runs overlap, or on the
    diagonal (padding attends to itself); it needs no ``mask_mod`` ("full") when both blocks
    are one and the same sequence without padding and the keys are all context. Plain tensor
    ops: nothing to compile, and nothing to recompile when the number of rows changes.
    """
    n, s = sequence.shape
    assert s % block == 0, f"packed rows of {s} slots do not split into blocks of {block}"
    blocks = s // block
    starts = torch.ones_like(sequence, dtype=torch.bool)
    starts[:, 1:] = sequence[:, 1:] != sequence[:, :-1]
    segment = starts.cumsum(1).view(n, blocks, block)  # increases along each row
    valid = (sequence >= 0).view(n, blocks, block)
    first = torch.where(valid, segment, s).amin(-1)  # (N, blocks); s: no real slot in it
    last = torch.where(valid, segment, -1).amax(-1)
    diagonal = torch.eye(blocks, dtype=torch.bool, device=sequence.device)
    visit = (first[:, :, None] <= last[:, None, :]) & (first[:, None, :] <= last[:, :, None])
    visit |= diagonal
    one_sequence = (first == last) & valid.all(-1)
    keys_context = (groups.view(n, blocks, block) == 0).all(-1)
    full = (one_sequence[:, :, None] & one_sequence[:, None, :] & keys_context[:, None, :]
            & (first[:, :, None] == first[:, None, :]))

    def kv_blocks(chosen: Tensor) -> tuple[Tensor, Tensor]:  # (N, 1, nb), (N, 1, nb, nb)
        counts = chosen.sum(-1, dtype=torch.int32)
        indices = torch.argsort((~chosen).to(torch.uint8), dim=-1, stable=True).to(torch.int32)
        return counts[:, None], indices[:, None]

    return BlockMask.from_kv_blocks(*kv_blocks(visit & ~full), *kv_blocks(full),
                                    BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(s, s))
