"""data2vec's and iBOT's student (``objective.student = "encoder"``): the encoder reads [MASK]
at the targets, a head predicts, and what stood at the targets never reaches the predictions."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import SMALL_MODEL, short_batch, tiny
from tjepa import runs, train
from tjepa.config import ConfigError
from tjepa.mlm import MaskedInput
from tjepa.objective import ObjectiveConfig
from tjepa.variants.student import EncoderStudentJEPA


def student(**objective) -> EncoderStudentJEPA:
    torch.manual_seed(0)
    return EncoderStudentJEPA(SMALL_MODEL, ObjectiveConfig(student="encoder", **objective))


def test_the_students_predictions_never_see_the_tokens_at_the_targets():
    model = student().eval()
    batch = short_batch()
    with torch.no_grad():
        before, targets_before = model.predict(batch)
    for v in range(len(batch.document)):  # one view at a time: views of a document overlap
        changed = batch.tokens.clone()
        targets = batch.target_positions[v][batch.target_valid[v]]
        changed[batch.document[v], targets] = (changed[batch.document[v], targets] % 49) + 1
        with torch.no_grad():
            after, targets_after = model.predict(type(batch)(**{**batch.__dict__,
                                                                "tokens": changed}))
        torch.testing.assert_close(after[v], before[v], rtol=0, atol=1e-6)  # it read [MASK]
        assert not torch.equal(targets_after[v], targets_before[v])  # the teacher reads them


def test_each_prediction_is_the_head_on_the_encoders_output_at_its_mask_slot():
    model = student().eval()
    batch = short_batch()
    masked = MaskedInput.of(batch, model.mask_id)
    with torch.no_grad():
        predictions, _ = model.predict(batch)
        for v in range(len(batch.document)):  # each view alone: no padding at all
            n_context = int(batch.context_valid[v].sum())
            n_targets = int(batch.target_valid[v].sum())
            slots = torch.cat([torch.arange(n_context),
                               masked.n_context + torch.arange(n_targets)])
            h = model.context_encoder(masked.tokens[v, slots][None],
                                      masked.positions[v, slots][None], None)[0]
            torch.testing.assert_close(predictions[v, :n_targets], model.head(h[n_context:]),
                                       atol=1e-5, rtol=1e-4)


def test_the_student_predicts_from_its_own_encoder_and_trains_no_predictor():
    model = student(anti_collapse="vicreg")
    assert not hasattr(model, "predictor")
    loss_sum, count, regularizer = model(short_batch())
    assert int(count) == int(short_batch().target_valid.sum())
    (loss_sum / count + regularizer).backward()
    assert model.head[0].weight.grad.abs().sum() > 0
    assert model.context_encoder.embed.weight.grad[model.mask_id].abs().sum() > 0  # [MASK]
    assert all(p.grad is None for p in model.target_encoder.parameters())  # EMA only


def test_the_students_prediction_depends_on_the_context():
    model = student().eval()
    batch = short_batch()
    changed = batch.tokens.clone()
    v = 0
    context = batch.context_positions[v][batch.context_valid[v]]
    changed[batch.document[v], context] = (changed[batch.document[v], context] % 49) + 1
    with torch.no_grad():
        before, _ = model.predict(batch)
        after, _ = model.predict(type(batch)(**{**batch.__dict__, "tokens": changed}))
    assert not torch.allclose(before[v], after[v])


def test_a_run_with_the_encoder_as_student_trains_and_loads_back(tinytales_bins, tmp_path):
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=3",
                                         'objective.student="encoder"',
                                         'objective.target="blocks"'))
    train.train(config, tmp_path / "run", progress=False)
    model, loaded, _ = runs.load_run(tmp_path / "run")
    assert isinstance(model, EncoderStudentJEPA) and loaded.objective.student == "encoder"


def test_the_encoder_as_student_is_a_jepas_and_takes_padded_batches():
    with pytest.raises(ConfigError, match="student"):
        runs.load_config(None, ['objective.name="mlm"', 'objective.student="encoder"'])
    with pytest.raises(ConfigError, match="student"):
        runs.load_config(None, ['objective.student="encoder"', "train.pack_length=512"])
    with pytest.raises(ConfigError, match="student"):
        runs.load_config(None, ['objective.student="teacher"'])
