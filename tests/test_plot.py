"""Renderings of masks: what the notebooks and widgets show, tested directly."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch

from tjepa import plot
from tjepa.masking import MaskingConfig, MaskSampler


def sample_batch():
    sampler = MaskSampler(MaskingConfig("ul2", views=2), seed=0)
    return sampler(torch.arange(1, 41).repeat(2, 1), torch.tensor([40, 25]))


def test_mask_view_roles_mark_context_targets_and_unused():
    batch = sample_batch()
    for v in range(4):
        roles = plot.view_roles(batch, v)
        assert len(roles) == int(batch.lengths[batch.document[v]])
        assert (roles == -1).sum() == batch.context_valid[v].sum()
        assert (roles >= 0).sum() == batch.target_valid[v].sum()


def test_mask_html_colours_each_token_by_its_role():
    roles = np.array([-1, -1, 0, 0, -2, 1])
    html = plot.masking_html(["a", "b", "<c>", "d", "e", "f"], roles, title="R")
    assert html.count("<span") == 6 + 2  # tokens and the two legend swatches
    assert "&lt;c&gt;" in html
    colors = plot.span_colors(2)
    assert html.count(colors[0]) == 2 and html.count(colors[1]) == 1


def test_mask_figures_draw():
    batch = sample_batch()
    fig = plot.masking_figure([plot.view_roles(batch, v) for v in range(4)], list("abcd"))
    assert len(fig.axes) == 1
    fig = plot.attention_figure(batch, 0)
    image = fig.axes[0].images[0].get_array()
    side = batch.context_positions.shape[1] + batch.target_positions.shape[1]
    assert image.shape == (side, side)


def test_mask_denoiser_view_changes_with_its_controls():
    tokens = torch.arange(1, 61).repeat(2, 1)
    lengths = torch.tensor([60, 45])
    strings = [[f"t{i}" for i in range(60)]] * 2
    html_a, fig_a = plot.denoiser_view(tokens, lengths, strings, rate=0.15, mean_span=3, seed=0)
    html_b, _ = plot.denoiser_view(tokens, lengths, strings, rate=0.5, mean_span=8, seed=0)
    html_s, _ = plot.denoiser_view(tokens, lengths, strings, kind="suffix", rate=0.25)
    assert html_a != html_b and "rate=0.50" in html_b
    assert html_s.count("font-weight:bold") == 15  # the last quarter of 60 tokens
    assert len(fig_a.axes) == 1


def test_margins_figure_draws_each_runs_margin_over_its_own_best_baseline():
    from tjepa.probe import ProbeResult

    def results(trained):
        return [ProbeResult("a", "story", trained=trained, random_init=0.5,
                            baselines={"bag_of_words": 0.6}),
                ProbeResult("b", "sentences", trained=0.4, random_init=0.5),
                ProbeResult("c", "lexical", trained=0.9, random_init=0.5)]

    fig = plot.margins_figure({"jepa": results(0.7), "mlm": results(0.55)})
    bars = fig.axes[0].patches
    assert [round(b.get_height(), 3) for b in bars] == [0.1, -0.1, -0.05, -0.1]  # c: lexical
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]
    matplotlib.pyplot.close(fig)


def test_signal_cap_figure_draws_a_line_per_criterion():
    fig = plot.signal_cap_figure([1, 10, 100], {"regression": [1, 0.1, 0.01],
                                                "cross-entropy": [1, 0.75, 0.5]})
    assert [line.get_label() for line in fig.axes[0].lines] == ["regression", "cross-entropy"]
    matplotlib.pyplot.close(fig)


def test_collapse_figure_draws_the_regression_targets_beside_the_encoder_where_logged():
    healthy = [{"step": s, "rankme": 100.0, "rankme_doc": 30.0, "std": 0.08} for s in (0, 100)]
    crowded = [r | {"targets_rankme": 90.0 - s / 2, "targets_std": 0.08} for r, s in
               zip(healthy, (0, 100), strict=True)]
    fig = plot.collapse_figure({"last layer": healthy, "blocks": crowded}, alarm_line=12.8)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["last layer", "blocks", "blocks: regression targets", "alarm line"]
    assert list(fig.axes[0].get_lines()[2].get_ydata()) == [90.0, 40.0]
    assert len(fig.axes[1].get_lines()) == 2  # no document RankMe of the targets
    plot.plt.close(fig)


def test_energy_figure_draws_a_row_of_bars_per_sentence():
    fig = plot.energy_figure({"good": (["The", " dog", " is"], [0.1, 0.2, 0.3]),
                              "bad": (["The", " dog", " are"], [0.1, 0.2, 0.9])})
    assert len(fig.axes) == 2 and [len(ax.patches) for ax in fig.axes] == [3, 3]
    assert fig.axes[1].get_title(loc="left").endswith("1.200 in all")
    matplotlib.pyplot.close(fig)
