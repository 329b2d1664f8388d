"""Packing: the three passes of a JEPA step with no padding, sequences end to end in rows.

A ``MaskedBatch`` pads every view to the widest view of the batch: with stories of varied
lengths and UL2's mixture of context sizes, much of what the target encoder, the context
encoder and the predictor compute on is padding (``padding_share`` measures it). ``pack``
lays each pass out as rows of ``row_length`` slots instead, holding whole sequences one after
another:

    target encoder : every document                   (sequence = document)
    context encoder: every view's context              (sequence = view)
    predictor      : every view's context, then its targets, as in the padded layout

A sequence never crosses a row, and the attention mask keeps sequences apart (``sequence`` ids;
flex_attention skips the blocks between them), so each token sees exactly what it sees in the
padded layout and the loss is the same (``tests/test_packing.py`` checks it). Only the number
of rows changes from batch to batch; ``torch.compile`` treats it as a dynamic size.

The layout is chosen on the host (first-fit decreasing over the sequence lengths, a loop over
a few hundred numbers), in the data thread, so the step itself never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tjepa.attention import attention_groups
from tjepa.masking import MaskedBatch, map_tensors


@dataclass
class PackedBatch:
    """A MaskedBatch laid out as rows of L slots. Every tensor is (rows, L); ``*_sequence`` is
    the document or view a slot belongs to, -1 for padding."""

    document_tokens: Tensor  # (Rd, L) the target encoder's input
    document_positions: Tensor
    document_sequence: Tensor
    context_tokens: Tensor  # (Rc, L) the context encoder's input
    context_positions: Tensor
    context_sequence: Tensor
    predictor_positions: Tensor  # (Rp, L) the predictor's input: context, then mask tokens
    predictor_sequence: Tensor
    predictor_group: Tensor  # 0 context, span + 1 target, -1 padding (attention.may_attend)
    predictor_source: Tensor  # which slot of the flattened context rows a context slot carries
    predictor_target: Tensor  # which slot of the flattened document rows a target slot predicts

    @property
    def target_valid(self) -> Tensor:
        return self.predictor_group > 0

    @property
    def context_valid(self) -> Tensor:
        return self.context_sequence >= 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedBatch:
        return map_tensors(self, Tensor.pin_memory)


def pack(batch: MaskedBatch, row_length: int) -> PackedBatch:
    """The passes of ``batch`` (on the CPU) packed into rows of ``row_length`` slots."""
    longest = batch.tokens.shape[1]
    if row_length < longest:
        raise ValueError(f"row_length {row_length} is shorter than the documents' block "
                         f"({longest} tokens): a sequence must fit in one row")
    view_document = batch.document[:, None]
    view = torch.arange(len(batch.document))[:, None]

    position = torch.arange(longest).expand_as(batch.tokens)
    document_valid = position < batch.lengths[:, None]
    document_slot, document_rows = _lay_out(document_valid, row_length)
    document = _scatter(document_slot, document_valid, document_rows, row_length,
                        tokens=batch.tokens, positions=position,
                        sequence=torch.arange(len(batch.tokens))[:, None].expand_as(position))

    context_slot, context_rows = _lay_out(batch.context_valid, row_length)
    context = _scatter(context_slot, batch.context_valid, context_rows, row_length,
                       tokens=batch.tokens[view_document, batch.context_positions],
                       positions=batch.context_positions,
                       sequence=view.expand_as(batch.context_positions))

    # The predictor's input per view, as in the padded layout: context slots, then targets.
    group = attention_groups(batch)  # (V, C + P)
    valid = group >= 0
    n_context = batch.context_positions.shape[1]
    document_start = document_slot[:, 0]  # flat slot of each document's first token
    source = torch.cat([context_slot, torch.zeros_like(batch.target_positions)], dim=1)
    target = torch.cat([torch.zeros_like(batch.context_positions),
                        document_start[view_document] + batch.target_positions], dim=1)
    predictor_slot, predictor_rows = _lay_out(valid, row_length)
    predictor = _scatter(
        predictor_slot, valid, predictor_rows, row_length,
        positions=torch.cat([batch.context_positions, batch.target_positions], dim=1),
        sequence=view.expand_as(group),
        group=group, source=torch.where(group == 0, source, 0),
        target=torch.where(torch.arange(group.shape[1]) >= n_context, target, 0))
    return PackedBatch(
        document["tokens"], document["positions"], document["sequence"],
        context["tokens"], context["positions"], context["sequence"],
        predictor["positions"], predictor["sequence"], predictor["group"], predictor["source"],
        predictor["target"])


def padding_share(batch: MaskedBatch | PackedBatch) -> float:
    """Share of the token slots the three passes compute on — target encoder, context encoder,
    predictor (context + targets) — that are padding: compute that buys nothing."""
    if isinstance(batch, PackedBatch):
        real = (int((batch.document_sequence >= 0).sum()) + int(batch.context_valid.sum())
                + int((batch.predictor_sequence >= 0).sum()))
        slots = (batch.document_tokens.numel() + batch.context_tokens.numel()
                 + batch.predictor_group.numel())
        return 1 - real / slots
    context, targets = int(batch.context_valid.sum()), int(batch.target_valid.sum())
    real = int(batch.lengths.sum()) + 2 * context + targets
    slots = batch.tokens.numel() + 2 * batch.context_valid.numel() + batch.target_valid.numel()
    return 1 - real / slots


def first_fit(lengths: list[int], row_length: int) -> tuple[list[int], list[int], int]:
    """Rows for sequences of these lengths, longest first, each into the first row with room:
    each sequence's row and offset in it, and the number of rows (first-fit decreasing)."""
    row, offset, free = [0] * len(lengths), [0] * len(lengths), []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, room in enumerate(free) if room >= lengths[i]), len(free))
        if r == len(free):
            free.append(row_length)
        row[i], offset[i] = r, row_length - free[r]
        free[r] -= lengths[i]
    return row, offset, max(len(free), 1)


def _lay_out(valid: Tensor, row_length: int) -> tuple[Tensor, int]:
    """Where the valid entries of each row of ``valid`` (N, S) go, in order, when each row
    becomes one packed sequence: their flat slot (N, S) (meaningful where valid) and the rows."""
    row, offset, n_rows = first_fit(valid.sum(1).tolist(), row_length)
    start = torch.tensor(row) * row_length + torch.tensor(offset, dtype=torch.long)
    return start[:, None] + valid.cumsum(1) - 1, n_rows


def _scatter(slot: Tensor, valid: Tensor, n_rows: int, row_length: int,
             **values: Tensor) -> dict[str, Tensor]:
    """Each (N, S) tensor of ``values`` at its valid entries' slots in (n_rows, row_length)
    rows; padding slots hold 0 (-1 for ``sequence`` and ``group``)."""
    where = slot[valid]
    packed = {}
    for name, value in values.items():
        fill = -1 if name in ("sequence", "group") else 0
        out = torch.full((n_rows * row_length,), fill, dtype=torch.long)
        out[where] = value[valid].long()
        packed[name] = out.view(n_rows, row_length)
    return packed
