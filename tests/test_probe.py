"""Probes on features with a known answer, and the evaluation of a real (tiny) run."""

from __future__ import annotations

import pytest
import torch

from tjepa import probe


def test_linear_probe_reads_a_linearly_coded_label_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    x = torch.randn(600, 16, generator=g)
    x[:, :4] += 5 * torch.nn.functional.one_hot(y, 4)
    assert probe.linear_probe(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = torch.randn(600, 16, generator=g)
    assert probe.linear_probe(noise[:400], y[:400], noise[400:], y[400:]) < 0.4


def test_linear_probe_cannot_compute_xnor_but_pair_features_can_compare():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (800, 2), generator=g).float()
    xnor = (bits[:, 0] == bits[:, 1]).long()
    x = bits + 0.05 * torch.randn(800, 2, generator=g)
    assert probe.linear_probe(x[:600], xnor[:600], x[600:], xnor[600:]) < 0.65
    pairs = probe.pair_features(x[:, :1], x[:, 1:])  # [a, b, |a-b|, ab]
    assert probe.linear_probe(pairs[:600], xnor[:600], pairs[600:], xnor[600:]) > 0.95


def test_random_init_scores_fold_into_their_mean_and_spread():
    folded = probe._fold({"trained": 0.9, "random_init/0": 0.4, "random_init/1": 0.6})
    assert folded == pytest.approx({"trained": 0.9, "random_init": 0.5, "random_init_std": 0.1})


def test_nearest_documents_finds_the_closest_rows():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]])
    assert probe.nearest_documents(x, 0, k=1)[0][0] == 1


