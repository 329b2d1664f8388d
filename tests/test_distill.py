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
from tjepa.objective import ObjectiveConfig
from tjepa.variants.distill import Prototypes
from tjepa.variants.jepa import VariantJEPA
from tjepa.variants.student import EncoderStudentJEPA


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


@pytest.mark.parametrize("kind", [VariantJEPA, EncoderStudentJEPA], ids=["predictor", "encoder"])
def test_a_training_forward_moves_the_centre_and_a_measuring_one_does_not(kind):
    torch.manual_seed(0)
    student = "encoder" if kind is EncoderStudentJEPA else "predictor"
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


def test_distill_needs_a_teacher_and_a_jepa():
    for overrides, word in ((['objective.anti_collapse="sigreg"'], "teacher"),
                            (['objective.name="mlm+jepa"'], "JEPA"),
                            (["objective.prototypes=1"], "prototypes"),
                            (["objective.teacher_temperature=0"], "teacher_temperature"),
                            (["objective.centre_momentum=1"], "centre_momentum")):
        with pytest.raises(ConfigError, match=word):
            runs.load_config(None, ['objective.loss="distill"', *overrides])
