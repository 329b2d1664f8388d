"""Figures and renderings shared by the notebooks and the training report.

Plain functions that take data and return a figure or an HTML string; they never print and
never read files, so notebooks, widgets and tests call them alike.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from tjepa.attention import attention_groups, dense_mask
from tjepa.masking import MaskedBatch

CONTEXT_COLOR = "#cfe3ff"
UNUSED_COLOR = "#eeeeee"


def span_colors(n: int) -> list[str]:
    """One colour per target span, cycling through a qualitative palette."""
    cmap = plt.get_cmap("tab10")
    return [matplotlib.colors.to_hex(cmap(i % 10)) for i in range(n)]


def view_roles(batch: MaskedBatch, view: int) -> np.ndarray:
    """Role of each token of the view's document: -2 unused, -1 context, >= 0 target span id."""
    length = int(batch.lengths[batch.document[view]])
    roles = np.full(length, -2)
    context = batch.context_positions[view][batch.context_valid[view]].cpu().numpy()
    roles[context] = -1
    valid = batch.target_valid[view]
    roles[batch.target_positions[view][valid].cpu().numpy()] = \
        batch.target_span[view][valid].cpu().numpy()
    return roles


def masking_html(tokens: Sequence[str], roles: np.ndarray, title: str = "") -> str:
    """A document as HTML: context on blue, each target span on its own colour, unused grey."""
    colors = span_colors(int(roles.max()) + 1 if roles.max() >= 0 else 0)
    parts = []
    for text, role in zip(tokens, roles, strict=True):
        if role == -1:
            style = f"background:{CONTEXT_COLOR}"
        elif role == -2:
            style = f"background:{UNUSED_COLOR};color:#999"
        else:
            style = f"background:{colors[role]};color:white;font-weight:bold"
        parts.append(f'<span style="{style};border-radius:3px">{html.escape(text)}</span>')
    legend = (f'<span style="background:{CONTEXT_COLOR}">context</span> · '
              f'<span style="background:{UNUSED_COLOR}">unused</span> · '
              "<b>coloured</b>: target spans")
    head = f"<b>{html.escape(title)}</b><br>" if title else ""
    return (f'<div style="font-family:monospace;line-height:1.9;white-space:pre-wrap">{head}'
            f'{"".join(parts)}<br><small>{legend}</small></div>')


def masking_figure(roles_per_view: Sequence[np.ndarray], titles: Sequence[str]) -> Figure:
    """Each view as a strip of tokens: context, target spans (one colour each), unused."""
    width = max(len(r) for r in roles_per_view)
    n_spans = max(int(r.max()) + 1 for r in roles_per_view)
    colors = [UNUSED_COLOR, CONTEXT_COLOR, *span_colors(max(n_spans, 1))]
    image = np.full((len(roles_per_view), width), np.nan)
    for i, roles in enumerate(roles_per_view):
        image[i, : len(roles)] = roles + 2
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(roles_per_view) + 1.0))
    ax.imshow(image, aspect="auto", cmap=ListedColormap(colors), vmin=-0.5,
              vmax=len(colors) - 0.5, interpolation="nearest")
    ax.set_yticks(range(len(titles)), titles)
    ax.set_xlabel("token position")
    ax.set_title("views: context (light blue), target spans (colours), unused (grey)")
    fig.tight_layout()
    return fig


def attention_figure(batch: MaskedBatch, view: int) -> Figure:
    """The predictor's attention mask for one view: context rows first, then packed targets."""
    groups = attention_groups(batch)[view : view + 1]
    mask = dense_mask(groups)[0, 0].cpu().numpy()
    n_context = int(batch.context_valid[view].sum())
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(mask, cmap="Blues", interpolation="nearest")
    ax.axhline(n_context - 0.5, color="tab:red", lw=0.8)
    ax.axvline(n_context - 0.5, color="tab:red", lw=0.8)
    ax.set_xlabel("key (context | targets | padding)")
    ax.set_ylabel("query")
    ax.set_title("predictor attention: who may look at whom")
    fig.tight_layout()
    return fig


def training_figure(records: Sequence[dict]) -> Figure:
    """Training and validation loss against step, from ``metrics.jsonl`` records."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in records if "loss" in r]
    ax.plot(steps, [r["loss"] for r in records if "loss" in r], label="train loss")
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def probe_figure(results) -> Figure:
    """Probe accuracies: the trained encoder, random init and the best shortcut side by side.
    """
    names = [r.name for r in results]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
    shortcut = [max(r.baselines.values()) if r.baselines else np.nan for r in results]
    series = [("trained", [r.trained for r in results], None),
              ("random init", [r.random_init for r in results],
               [r.random_init_std or 0.0 for r in results]),
              ("best shortcut", shortcut, None)]
    for i, (label, values, spread) in enumerate(series):
        ax.bar(x + (i - 1) * 0.27, values, width=0.27, label=label, yerr=spread, capsize=2)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("linear probes on frozen embeddings")
    fig.tight_layout()
    return fig


def lengths_figure(lengths_by_split: dict[str, np.ndarray],
                   block_size: int | None = None) -> Figure:
    """Histogram of document lengths in tokens, one series per split."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, lengths in lengths_by_split.items():
        ax.hist(lengths, bins=50, alpha=0.6, density=True, label=f"{split} ({len(lengths):,})")
    if block_size:
        ax.axvline(block_size, color="k", ls="--", lw=1, label=f"block size {block_size}")
    ax.set_xlabel("tokens per document")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    return fig


def collapse_figure(runs: dict[str, Sequence[dict]], alarm_line: float | None = None) -> Figure:
    """Token and document RankMe and std of the target encoder over steps, a line per run; a
    JEPA's regression targets (``targets_`` keys), where logged, dashed beside its token
    RankMe and std."""
    keys = [("rankme", "token RankMe"), ("rankme_doc", "document RankMe"),
            ("std", "std of normalized embeddings")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for name, records in runs.items():
        measured = [r for r in records if "rankme" in r]
        steps = [r["step"] for r in measured]
        for ax, (key, _) in zip(axes, keys, strict=True):
            line, = ax.plot(steps, [r.get(key, np.nan) for r in measured], "o-", label=name)
            if any(f"targets_{key}" in r for r in measured):
                ax.plot(steps, [r.get(f"targets_{key}", np.nan) for r in measured], "--",
                        color=line.get_color(), label=f"{name}: regression targets")
    for ax, (_, title) in zip(axes, keys, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if alarm_line is not None:
        axes[0].axhline(alarm_line, color="tab:red", ls="--", lw=1, label="alarm line")
    axes[0].legend()
    fig.tight_layout()
    return fig


def embedding_map(features: np.ndarray, labels: Sequence[str], title: str = "") -> Figure:
    """The first two principal components of ``features``, coloured by ``labels``."""
    x = features - features.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    for label in sorted(set(labels)):
        mask = np.asarray(labels) == label
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7, label=label)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    return fig


def denoiser_view(tokens, lengths, token_strings: Sequence[Sequence[str]], kind: str = "span",
                  rate: float = 0.15, mean_span: float = 3.0, seed: int = 0,
                  document: int = 0) -> tuple[str, Figure]:
    """One denoiser applied to one document: its HTML rendering and its attention mask figure.
    What the masking notebook's widgets redraw (a plain function, so tests can call it)."""
    from tjepa.masking import Denoiser, MaskingConfig, MaskSampler

    denoiser = Denoiser(name=f"{kind} rate={rate:.2f} span={mean_span:g}", kind=kind, rate=rate,
                        mean_span=mean_span)
    batch = MaskSampler(MaskingConfig(denoisers=[denoiser]), seed=seed)(tokens, lengths)
    roles = view_roles(batch, document)
    html = masking_html(token_strings[document][: len(roles)], roles, title=denoiser.name)
    return html, attention_figure(batch, document)


def ablation_figure(rows: Sequence[dict], metrics: dict[str, Sequence[dict]]) -> Figure:
    """Probe accuracy per mechanism (and random init), final RankMe, loss curves, s/step."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    names = [p["name"] for p in rows[0]["probes"]]
    x = np.arange(len(names))
    width = 0.8 / (len(rows) + 1)
    for i, row in enumerate(rows):
        axes[0, 0].bar(x + i * width, [p["trained"] for p in row["probes"]], width,
                       yerr=[p.get("trained_std") or 0.0 for p in row["probes"]], capsize=1.5,
                       label=row["mechanism"])
    axes[0, 0].bar(x + len(rows) * width, [p["random_init"] for p in rows[0]["probes"]], width,
                   label="random init", color="lightgrey")
    axes[0, 0].set_xticks(x + 0.4, names, rotation=35, ha="right", fontsize=8)
    axes[0, 0].set_ylabel("probe accuracy")
    axes[0, 0].legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    mechanisms = [r["mechanism"] for r in rows]
    axes[0, 1].bar(mechanisms, [r["rankme"] for r in rows])
    axes[0, 1].set_title("final token RankMe (target encoder)")
    for mechanism, records in metrics.items():
        axes[1, 0].plot([r["step"] for r in records], [r["loss"] for r in records],
                        label=mechanism)
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_xlabel("step")
    axes[1, 0].set_title("prediction loss")
    axes[1, 0].legend()
    axes[1, 1].bar(mechanisms, [r["seconds_per_step"] for r in rows])
    axes[1, 1].set_title("seconds per step (equal steps: compare compute)")
    fig.tight_layout()
    return fig


def margins_figure(results_by_run: dict[str, Sequence],
                   kinds: Sequence[str] = ("story", "sentences", "nonlinear")) -> Figure:
    """Each run's margin over its own best baseline, probe by probe, for the probes of
    ``kinds`` that every run holds: runs side by side, 0 the line a probe must clear."""
    runs = list(results_by_run)
    by_name = {run: {r.name: r for r in results} for run, results in results_by_run.items()}
    first = results_by_run[runs[0]]
    names = [r.name for r in first if r.kind in kinds and all(r.name in by_name[run]
                                                              for run in runs)]
    x = np.arange(len(names))
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
    for i, run in enumerate(runs):
        margins = [by_name[run][n].margin for n in names]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, margins, width=width, label=run)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("margin over the best baseline")
    ax.legend()
    ax.set_title("what each objective's frozen embeddings make linearly readable")
    fig.tight_layout()
    return fig


def signal_cap_figure(perplexities: Sequence[float], shares: dict[str, Sequence[float]]
                      ) -> Figure:
    """The share of the constant prediction's loss that the best prediction saves, against the
    predictive perplexity, one line per criterion (``shares``: name → values)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in shares.items():
        ax.plot(perplexities, values, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("predictive perplexity (plausible words at a hidden position)")
    ax.set_ylabel("share of the constant's loss saved")
    ax.legend()
    ax.set_title("what a perfect predictor can gain")
    fig.tight_layout()
    return fig


def energy_figure(sentences: dict[str, tuple[Sequence[str], Sequence[float]]],
                  score: str = "energy") -> Figure:
    """Each sentence's loss at each of its tokens, hidden in turn: one row of bars per
    sentence (``sentences``: label → (its tokens, their losses)), on one shared scale, so the
    token where a pair's sentences part shows where the scores part."""
    fig, axes = plt.subplots(len(sentences), 1, figsize=(8, 1.9 * len(sentences)),
                             sharey=True, squeeze=False)
    for ax, (label, (tokens, losses)) in zip(axes[:, 0], sentences.items(), strict=True):
        x = np.arange(len(tokens))
        ax.bar(x, losses, color="tab:blue")
        ax.set_xticks(x, [t.replace("\n", "⏎") for t in tokens], rotation=40, ha="right")
        ax.set_ylabel(score)
        ax.set_title(f"{label}: {sum(losses):.3f} in all", fontsize=10, loc="left")
    fig.tight_layout()
    return fig
