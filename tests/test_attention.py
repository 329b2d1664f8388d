"""The attention rule's masks: flex block masks that visit what the rule allows, agree with
SDPA, and are built without waiting for the device."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers import SMALL_MODEL, HostWaits, varied_batch
from tjepa.attention import attention_mask, dense_mask
from tjepa.jepa import JEPA
from tjepa.masking import MaskingConfig, MaskSampler
from tjepa.packing import pack


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_flex_block_masks_are_built_without_waiting_for_the_device(packed):
    # CUDA builds these in every step; the CPU can build them only without gradients.
    batch = MaskSampler(MaskingConfig("ul2", views=2), seed=0)(
        torch.randint(1, 50, (6, 96)), torch.tensor([96, 80, 64, 50, 40, 30]))
    layout = pack(batch, 256)  # on the host, in BatchStream's thread
    with torch.no_grad(), HostWaits() as waits:
        if packed:
            attention_mask(layout.predictor_group, "flex", layout.predictor_sequence)
            attention_mask(torch.where(layout.context_valid, 0, -1), "flex",
                           layout.context_sequence)
        else:
            attention_mask(torch.where(batch.context_valid, 0, -1), "flex")
    assert waits.calls == []


def test_packed_flex_and_sdpa_attention_agree():
    # Rows of 4 blocks of 128 with sequences across block edges: the block mask read off the
    # layout (attention.packed_block_mask) must visit every block a query needs, or flex and SDPA
    # would disagree. (The CPU's flex applies mask_mod in full blocks too; the next test checks
    # those.)
    torch.manual_seed(0)
    model = JEPA(SMALL_MODEL).eval()
    lengths = torch.tensor([300, 280, 140, 200, 90, 31])
    packed = pack(varied_batch(seed=2, lengths=lengths), row_length=512)
    with torch.no_grad():  # flex has no CPU backward: with gradients the CPU takes SDPA
        mask = attention_mask(torch.where(packed.document_sequence >= 0, 0, -1), "flex",
                              packed.document_sequence)
    visited = mask.to_dense()  # (N, 1, 4, 4) block pairs
    assert int(mask.full_kv_num_blocks.sum()) > 0  # some skip mask_mod,
    assert int(visited.sum()) < visited.numel()  # some are skipped
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex on CPU warns that it is unfused
        sdpa = model.predict_packed(packed)
        model.config.attention = "flex"
        flex = model.predict_packed(packed)
        model.config.attention = "sdpa"
    valid = packed.target_valid
    for a, b in zip(sdpa, flex, strict=True):
        assert torch.allclose(a[valid], b[valid], atol=1e-5)


def _blocks(counts, indices):  # BlockMask (N, 1, nb) counts and (N, 1, nb, nb) indices → bool
    nb = indices.shape[-1]
    chosen = torch.arange(nb) < counts[..., None]
    dense = torch.zeros(*indices.shape[:-1], nb, dtype=torch.bool)
    return dense.scatter_(-1, indices.long(), chosen)[:, 0]


@pytest.mark.parametrize("stream", ["document", "predictor"])
def test_packed_block_mask_visits_what_the_rule_allows_and_skips_mask_mod_only_when_all_is(
        stream):
    # The CPU's flex_attention applies mask_mod everywhere, so it cannot catch a block wrongly
    # marked full; this compares the blocks with the dense rule directly.
    lengths = torch.tensor([300, 280, 140, 200, 90, 31])
    packed = pack(varied_batch(seed=2, lengths=lengths), row_length=512)
    sequence = getattr(packed, f"{stream}_sequence")
    groups = packed.predictor_group if stream == "predictor" else torch.where(sequence >= 0, 0, -1)
    with torch.no_grad():
        mask = attention_mask(groups, "flex", sequence)
    n, s = groups.shape
    allowed = dense_mask(groups, sequence)[:, 0].view(n, s // 128, 128, s // 128, 128)
    any_allowed, all_allowed = allowed.any(4).any(2), allowed.all(4).all(2)  # (N, nb, nb)
    partial = _blocks(mask.kv_num_blocks, mask.kv_indices)
    full = _blocks(mask.full_kv_num_blocks, mask.full_kv_indices)
    assert not (partial & full).any()
    assert ((partial | full) >= any_allowed).all()  # every needed block is visited
    assert (all_allowed >= full).all()  # mask_mod is skipped only where nothing is masked
    assert full.any() and not (partial | full).all()
