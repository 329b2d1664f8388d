"""The objective: the loss's scale, the targets' normalization, and the anti-collapse
regularizers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tjepa.objective import (
    ObjectiveConfig,
    anti_collapse_term,
    instance_norm,
    prediction_loss,
    sigreg,
    span_means,
    token_centred,
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
    loss = prediction_loss(torch.zeros_like(targets), targets, "smooth_l1").mean()
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


def test_instance_norm_normalizes_each_document_alone_as_torch_does():
    torch.manual_seed(0)
    h = torch.randn(2, 10, 6)
    segment = torch.tensor([[0] * 7 + [-1] * 3, [0] * 4 + [1] * 6])  # padding; two documents
    out = instance_norm(h, segment)
    pieces = [(0, slice(0, 7)), (1, slice(0, 4)), (1, slice(4, 10))]
    for row, span in pieces:
        expected = F.instance_norm(h[row, span].T[None])[0].T
        assert torch.allclose(out[row, span], expected, atol=1e-5)
    assert torch.isfinite(out).all()  # padding: no statistics of its own, no NaN


def test_token_centred_targets_keep_only_what_differs_between_a_words_occurrences():
    torch.manual_seed(0)
    code = torch.randn(5, 6)  # each word's fixed code
    tokens = torch.tensor([[1, 2, 1, 3, 0, 0], [2, 1, 4, 2, 1, 0]])
    valid = torch.tensor([[True] * 4 + [False] * 2, [True] * 5 + [False]])
    context = 0.3 * torch.randn(2, 6, 6)
    h = code[tokens] + context
    h[~valid] = 1e3  # padding counts in no mean and no scale
    out = token_centred(h, tokens, valid, vocab_size=5)
    assert torch.isfinite(out).all()
    assert out[valid].square().mean() == pytest.approx(1.0, rel=1e-3)
    for word in (1, 2):  # the words that occur more than once: their occurrences sum to zero
        assert out[valid & (tokens == word)].sum(0).abs().max() < 1e-4
    assert out[0, 3].abs().max() == 0 and out[1, 2].abs().max() == 0  # once in the batch
    # the fixed codes are gone: the same context with other codes gives the same targets
    other = token_centred(torch.randn(5, 6)[tokens] + context, tokens, valid, vocab_size=5)
    assert torch.allclose(out[valid], other[valid], atol=1e-4)


def test_infonce_picks_each_prediction_s_own_target_among_the_valid_ones():
    torch.manual_seed(0)
    targets = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    right = prediction_loss(targets, targets, "infonce", valid, temperature=0.1)
    constant = prediction_loss(targets.mean((0, 1)).expand_as(targets), targets, "infonce",
                               valid, temperature=0.1)
    assert right[valid].mean() < 0.1 < constant[valid].mean()  # near 0 against about log 8
    assert torch.isfinite(right).all()
    # what sits in a padding slot is never a candidate: the valid rows do not move
    junk = targets.clone()
    junk[1, 3:] = targets[0, :2]  # copies of other rows' targets, in padding
    again = prediction_loss(targets, junk, "infonce", valid, temperature=0.1)
    assert torch.allclose(again[valid], right[valid], atol=1e-6)


def test_span_means_average_each_span_and_mark_where_it_starts():
    x = torch.arange(6.0).view(1, 6, 1)
    span = torch.tensor([[0, 0, 1, 1, 1, -1]])
    means, first, length = span_means(x, span)
    assert means[0, :5, 0].tolist() == [0.5, 0.5, 3.0, 3.0, 3.0]
    assert first[0].tolist() == [True, False, True, False, False, False]
    assert length[0, :5].tolist() == [2, 2, 3, 3, 3]


def test_span_targets_score_each_span_s_mean_once_weighed_by_its_length():
    from tests.helpers import SMALL_MODEL
    from tjepa.jepa import JEPA

    torch.manual_seed(0)
    targets = torch.randn(1, 5, 8)
    span = torch.tensor([[0, 0, 1, 1, 1]])
    # the right mean in every span, the wrong token everywhere: only the words are off
    predictions = span_means(targets, span)[0]
    only = JEPA(SMALL_MODEL, ObjectiveConfig(loss="l2", span_targets="only"))
    also = JEPA(SMALL_MODEL, ObjectiveConfig(loss="l2", span_targets="also"))
    per_token = JEPA(SMALL_MODEL, ObjectiveConfig(loss="l2"))
    assert float(only.score(predictions, targets, span).sum()) == pytest.approx(0, abs=1e-6)
    token_loss = per_token.score(predictions, targets, span)
    assert float(token_loss.sum()) > 0
    assert torch.allclose(also.score(predictions, targets, span), token_loss, atol=1e-6)
    # a span's loss sits at its first slot, times its length
    off = torch.zeros_like(targets)
    expected = torch.tensor([2 * float(span_means(targets, span)[0][0, 0].square().mean()), 0,
                             3 * float(span_means(targets, span)[0][0, 2].square().mean()), 0, 0])
    assert torch.allclose(only.score(off, targets, span)[0], expected, atol=1e-5)
