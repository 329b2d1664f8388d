"""The objective: the loss's scale, the targets' normalization, and the anti-collapse
regularizers."""

from __future__ import annotations

import pytest
import torch

from tjepa.objective import (
    ObjectiveConfig,
    anti_collapse_term,
    prediction_loss,
    sigreg,
    vicreg_terms,
)


def test_sigreg_is_about_one_for_gaussian_samples_and_large_for_collapsed_ones():
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(4000, 32, generator=g)
    assert float(sigreg(gaussian, normalize=False, generator=g)) == pytest.approx(1.06, abs=0.3)
    # estimating the mean and scale first takes some of the sampling noise away
    assert float(sigreg(gaussian, generator=g)) == pytest.approx(0.55, abs=0.15)
    assert float(sigreg(torch.ones(4000, 32), generator=g)) > 500
    shifted = gaussian * 3 + 2
    assert float(sigreg(shifted, normalize=False, generator=g)) > 100  # the regularizer's view
    assert float(sigreg(shifted, generator=g)) == pytest.approx(0.55, abs=0.15)


def test_sigreg_is_differentiable():
    x = torch.randn(256, 16, requires_grad=True)
    sigreg(x, normalize=False).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_vicreg_variance_hinge_is_zero_for_unit_variance_and_covariance_zero_when_independent():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 16, generator=g)
    variance, covariance = vicreg_terms(x)
    assert float(variance) < 0.02 and float(covariance) < 0.01
    variance, _ = vicreg_terms(0.1 * x)
    assert float(variance) == pytest.approx(0.9, abs=0.02)
    _, covariance = vicreg_terms(x[:, :1].repeat(1, 16))  # every dimension the same
    assert float(covariance) > 10


def test_constant_prediction_of_layer_normed_targets_costs_about_0_42():
    targets = torch.nn.functional.layer_norm(torch.randn(64, 8, 512), (512,))
    loss = prediction_loss(torch.zeros_like(targets), targets).mean()
    assert abs(float(loss) - 0.42) < 0.01


def test_the_sigreg_regularizer_weighs_the_same_whatever_the_number_of_tokens():
    # LeJEPA's scale: a fixed sample count, so λ does not grow with the batch
    config = ObjectiveConfig(anti_collapse="sigreg", sigreg_samples=256)
    g = torch.Generator().manual_seed(0)
    squeezed = torch.randn(8000, 1, generator=g) * torch.ones(1, 32)  # one direction
    terms = []
    for n in (500, 8000):
        torch.manual_seed(0)
        terms.append(float(anti_collapse_term(config, squeezed[:n], torch.ones(n))))
    assert terms[1] == pytest.approx(terms[0], rel=0.1)
    torch.manual_seed(0)
    unscaled = float(sigreg(squeezed, normalize=False))  # N = the rows: 31x larger here
    assert unscaled > 10 * terms[1] / config.sigreg_weight
    assert config.prediction_weight == pytest.approx(0.95)
    assert ObjectiveConfig(anti_collapse="vicreg").prediction_weight == 1.0
