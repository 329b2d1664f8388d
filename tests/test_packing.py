"""Packing: every token laid out once, rows never shared across a sequence boundary, and the
same loss, gradients and regularizers as the padded layout."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import LENGTHS, SMALL_MODEL, tiny, varied_batch
from tjepa import runs, train
from tjepa.config import ConfigError
from tjepa.jepa import JEPA
from tjepa.objective import ObjectiveConfig
from tjepa.packing import first_fit, pack, padding_share
from tjepa.variants.jepa import VariantJEPA


def test_first_fit_keeps_every_sequence_inside_one_row():
    lengths = [120, 30, 128, 64, 64, 1, 100, 27]
    row, offset, n_rows = first_fit(lengths, 128)
    assert n_rows == 5  # 509 tokens: 4 rows cannot hold 128 + 120 + 100 + …
    used = [[] for _ in range(n_rows)]
    for length, r, o in zip(lengths, row, offset, strict=True):
        assert o >= 0 and o + length <= 128
        used[r].append((o, o + length))
    for spans in used:  # no two sequences share a slot
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_pack_lays_every_token_out_once_in_order():
    batch = varied_batch()
    packed = pack(batch, row_length=128)
    for b, length in enumerate(LENGTHS.tolist()):
        here = packed.document_sequence == b
        assert int(here.sum()) == length
        assert here.any(1).sum() == 1  # one row
        assert torch.equal(packed.document_tokens[here], batch.tokens[b, :length])
        assert torch.equal(packed.document_positions[here], torch.arange(length))
    for v in range(len(batch.document)):
        context = batch.context_positions[v][batch.context_valid[v]]
        assert torch.equal(packed.context_positions[packed.context_sequence == v], context)
        targets = batch.target_positions[v][batch.target_valid[v]]
        mine = packed.predictor_sequence == v
        assert torch.equal(packed.predictor_positions[mine], torch.cat([context, targets]))
        # every target slot names the document slot it regresses
        document_slot = packed.predictor_target[mine & packed.target_valid]
        flat = packed.document_positions.flatten()
        assert torch.equal(flat[document_slot], targets)
    assert padding_share(packed) < 0.5 * padding_share(batch)


def test_pack_refuses_rows_shorter_than_a_document():
    with pytest.raises(ValueError, match="row_length 32 is shorter"):
        pack(varied_batch(), row_length=32)


def test_pack_length_shorter_than_the_block_is_a_config_error():
    with pytest.raises(ConfigError, match="pack_length"):
        runs.load_config(None, ["train.pack_length=64", "data.block_size=128"])


@pytest.mark.parametrize("anti_collapse, target", [
    ("vicreg", "last"), ("sigreg", "last"), ("vicreg", "blocks-instance"),
    ("vicreg", "blocks-layer")])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(anti_collapse, target):
    torch.manual_seed(0)
    kind, _, norm = target.partition("-")
    objective = ObjectiveConfig(anti_collapse=anti_collapse, target=kind,
                                target_block_norm=norm or "instance")
    model = (JEPA if kind == "last" else VariantJEPA)(SMALL_MODEL, objective)
    batch = varied_batch()
    results, grads = [], []
    for laid_out in (batch, pack(batch, row_length=128)):
        model.zero_grad()
        torch.manual_seed(1)  # SIGReg draws its directions
        loss_sum, count, regularizer = model(laid_out)
        (loss_sum / count + regularizer).backward()
        results.append((float(loss_sum.detach()), int(count), float(regularizer.detach())))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    (padded_loss, padded_count, padded_reg), (packed_loss, packed_count, packed_reg) = results
    assert packed_count == padded_count
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert packed_reg == pytest.approx(padded_reg, rel=1e-4)
    assert padded_reg != 0
    assert len(grads[0]) == len(grads[1])
    for padded, packed in zip(*grads, strict=True):
        assert torch.allclose(padded, packed, atol=1e-5, rtol=1e-3)


def test_packed_training_logs_the_padded_runs_losses(tinytales_bins, tmp_path):
    losses = {}
    for length in (0, 192):
        config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=4",
                                              f"train.pack_length={length}"))
        losses[length] = train.train(config, tmp_path / str(length), progress=False)["losses"]
    assert losses[192] == pytest.approx(losses[0], rel=1e-4)
