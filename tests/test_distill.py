"""Self-distillation over prototypes (``objective.loss = "distill"``): DINO's cross-entropy of
the student's distribution against the teacher's centred, sharpened one; the centre moves only
in training; the teacher's prototypes follow the student's by EMA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import SMALL_MODEL, short_batch, tiny
from tjepa import runs, train
from tjepa.config import ConfigError
from tjepa.data2vec import Data2VecJEPA
from tjepa.distill import Prototypes
from tjepa.jepa import JEPA
from tjepa.objective import ObjectiveConfig


def test_the_loss_is_the_cross_entropy_against_the_centred_sharpened_teacher():
    torch.manual_seed(0)
    heads = Prototypes(dim=8, count=5, temperature=0.1, teacher_temperature=0.04)
    heads.centre.copy_(torch.randn(5))
    predictions, targets = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    w = F.normalize(heads.weight.detach(), dim=-1)
    student = F.log_softmax(F.normalize(predictions, dim=-1) @ w.T / 0.1, dim=-1)
    teacher = torch.softmax((F.normalize(targets, dim=-1) @ w.T - heads.centre) / 0.04, dim=-1)
    expected = -(teacher * student).sum(-1)
    assert torch.allclose(heads.loss(predictions, targets), expected, atol=1e-5)
    # a prediction that points where its target does beats one that points away
    assert heads.loss(targets, targets).mean() < heads.loss(-targets, targets).mean()


def test_the_centre_follows_the_valid_targets_mean_logits_and_the_teacher_the_student():
    torch.manual_seed(0)
    heads = Prototypes(dim=8, count=5, temperature=0.1, teacher_temperature=0.04,
                       centre_momentum=0.75)
    targets = torch.randn(2, 3, 8)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    logits = F.normalize(targets, dim=-1) @ F.normalize(heads.teacher_weight, dim=-1).T
    heads.loss(torch.randn(2, 3, 8), targets, valid)  # scores, then moves the centre
    assert torch.allclose(heads.centre, 0.25 * logits[valid].mean(0), atol=1e-6)
    before = heads.teacher_weight.clone()
    with torch.no_grad():
        heads.weight.add_(1.0)
    heads.update_teacher(0.9)
    assert torch.allclose(heads.teacher_weight, 0.9 * before + 0.1 * heads.weight.detach(),
                          atol=1e-6)


@pytest.mark.parametrize("kind", [JEPA, Data2VecJEPA], ids=["predictor", "encoder"])
def test_a_training_forward_moves_the_centre_and_a_measuring_one_does_not(kind):
    torch.manual_seed(0)
    student = "encoder" if kind is Data2VecJEPA else "predictor"
    model = kind(SMALL_MODEL, ObjectiveConfig(loss="distill", anti_collapse="vicreg",
                                              student=student))
    batch = short_batch()
    with torch.no_grad():
        model(batch)  # validation: under no_grad
    assert not model.prototypes.centre.any()
    model.eval()
    model(batch)
    assert not model.prototypes.centre.any()
    model.train()
    loss_sum, n, _ = model(batch)
    assert model.prototypes.centre.abs().sum() > 0
    loss_sum.backward()
    assert model.prototypes.weight.grad.abs().sum() > 0  # the student's prototypes learn
    teacher = model.prototypes.teacher_weight.clone()
    with torch.no_grad():
        model.prototypes.weight.add_(1.0)  # as an optimizer step would move it
    model.update_target(0.5)  # the target encoder's EMA moves the teacher's prototypes too
    assert torch.allclose(model.prototypes.teacher_weight, teacher + 0.5, atol=1e-6)


def test_a_distilling_run_trains_and_loads_back_its_prototypes(tinytales_bins, tmp_path):
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=3",
                                         'objective.loss="distill"', "objective.prototypes=16"))
    train.train(config, tmp_path / "run", progress=False)
    model, loaded, _ = runs.load_run(tmp_path / "run")
    assert loaded.objective.loss == "distill" and model.prototypes.weight.shape == (16, 32)
    assert model.prototypes.centre.abs().sum() > 0  # the trained centre came back


def test_distill_needs_a_teacher_a_jepa_and_token_targets():
    for overrides, word in ((['objective.anti_collapse="sigreg"'], "teacher"),
                            (['objective.name="mlm+jepa"'], "JEPA"),
                            (['objective.span_targets="also"'], "span_targets"),
                            (["objective.prototypes=1"], "prototypes"),
                            (["objective.teacher_temperature=0"], "teacher_temperature"),
                            (["objective.centre_momentum=1"], "centre_momentum")):
        with pytest.raises(ConfigError, match=word):
            runs.load_config(None, ['objective.loss="distill"', *overrides])


def ibot(**objective) -> Data2VecJEPA:
    torch.manual_seed(0)
    return Data2VecJEPA(SMALL_MODEL, ObjectiveConfig(student="encoder", loss="distill",
                                                     document_weight=0.5, **objective))


def test_the_document_term_is_ibots_cls_loss_on_the_pooled_masked_document():
    model = ibot().eval()
    batch = short_batch()
    with torch.no_grad():  # a teacher apart from the student, and a centre: both are read
        heads = model.document_prototypes
        heads.teacher_weight.add_(torch.randn_like(heads.teacher_weight) * 0.1)
        heads.centre.copy_(torch.randn_like(heads.centre))
        centre = model.document_prototypes.centre.clone()
        _, _, term = model(batch)  # anti_collapse ema: the document term alone
        h, masked, documents = model.encode(batch)
        slots = (masked.groups >= 0).float()[..., None]
        student = model.head((h * slots).sum(1) / slots.sum(1))  # the masked document's mean
        valid = torch.arange(batch.tokens.shape[1]) < batch.lengths[:, None]
        whole = (documents * valid[..., None]).sum(1) / batch.lengths[:, None]
        teacher = whole[batch.document]  # each view's whole document, as the teacher sees it
        w, w_teacher = (F.normalize(x, dim=-1) for x in (heads.weight, heads.teacher_weight))
        p_teacher = torch.softmax((F.normalize(teacher, dim=-1) @ w_teacher.T - centre) / 0.04,
                                  dim=-1)
        log_p_student = F.log_softmax(F.normalize(student, dim=-1) @ w.T / 0.1, dim=-1)
        expected = -(p_teacher * log_p_student).sum(-1)  # (V,)
    torch.testing.assert_close(term, 0.5 * expected.mean())
    torch.testing.assert_close(model.document_prototypes.centre, centre)  # eval: it stays
    model.train()
    with torch.no_grad():  # validation: training mode, no gradients
        model(batch)
    torch.testing.assert_close(model.document_prototypes.centre, centre)


def test_the_document_term_trains_the_encoder_and_its_own_prototypes_and_centre():
    model = ibot()
    batch = short_batch()
    loss_sum, n, term = model(batch)
    assert model.document_prototypes.centre.abs().sum() > 0  # its own centre moved
    term.backward()  # the document term alone
    assert model.document_prototypes.weight.grad.abs().sum() > 0
    assert model.prototypes.weight.grad is None  # the token prototypes are not its
    assert any(p.grad is not None and p.grad.abs().sum() > 0  # the student learns from it
               for p in model.context_encoder.parameters())
    teacher = model.document_prototypes.teacher_weight.clone()
    with torch.no_grad():
        model.document_prototypes.weight.add_(1.0)
    model.update_target(0.5)
    assert torch.allclose(model.document_prototypes.teacher_weight, teacher + 0.5, atol=1e-6)


def test_without_a_document_weight_ibot_has_no_document_term():
    model = Data2VecJEPA(SMALL_MODEL, ObjectiveConfig(student="encoder", loss="distill"))
    assert not hasattr(model, "document_prototypes")
    assert float(model(short_batch())[2]) == 0.0


def test_a_run_with_the_document_term_trains_and_loads_back_its_prototypes(tinytales_bins,
                                                                          tmp_path):
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=3",
                                         'objective.loss="distill"', 'objective.student="encoder"',
                                         "objective.document_weight=1.0",
                                         "objective.prototypes=16"))
    train.train(config, tmp_path / "run", progress=False)
    model, loaded, _ = runs.load_run(tmp_path / "run")
    assert loaded.objective.document_weight == 1.0
    assert model.document_prototypes.centre.abs().sum() > 0  # the trained centre came back


def test_the_document_term_needs_ibots_student_and_loss():
    for overrides, word in ((['objective.loss="distill"'], "needs student"),
                            (['objective.student="encoder"'], "needs loss"),
                            (['objective.loss="distill"', 'objective.student="encoder"',
                              "objective.document_weight=-1"], "document_weight")):
        with pytest.raises(ConfigError, match=word):
            runs.load_config(None, ["objective.document_weight=1.0", *overrides])
