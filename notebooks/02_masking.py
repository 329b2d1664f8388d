# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-widgets,-varInspector
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Masking: UL2 denoisers
#
# **You will learn** what a view of a document is, which three kinds of view UL2's denoisers
# draw and what each asks of the encoder, how a view becomes tensors, and the attention rule
# that keeps a prediction honest. **Before you start:** chapter 01 (token bins, whole
# documents); UL2, Tay et al. 2022, §3.1 (the mixture of denoisers); I-JEPA, Assran et al.
# 2023, §3 (context and target blocks).
#
# ## The question
# A JEPA learns by predicting a hidden part of a document from the rest. *Which* part it hides
# decides what it must learn. Hide one word in ten and the neighbours nearly give it away: the
# encoder learns local syntax. Hide half the story in long runs and it must know how stories
# go. Hide the end and it must know what happens next. No single choice teaches all three, so
# tjepa, like UL2, draws each view from a **mixture**.
#
# A *view* of a document splits its tokens into **context** (what the context encoder reads)
# and **target spans** (what the predictor must predict, in embedding space). The denoisers
# (`tjepa/masking.py`, rates and spans from `configs/masking/ul2.toml`):
#
# - **R** (regular): short spans at a low rate (15 % of tokens in spans of 3 or 8) — local
#   infilling, BERT's and T5's regime; the context nearly settles the answer.
# - **X** (extreme): long spans (64) or a high rate (50 %) — much from little; the encoder must
#   carry what a story is about across long gaps.
# - **S** (sequential): the last quarter of the document from everything before it — a prefix
#   LM's task, continuation; UL2 draws it as often as R and X together.
#
# UL2 (§3.1.2) found that a model trained on the mix does well at what each denoiser alone
# trains for. For a JEPA the mix has a second use: each denoiser sets a different predictive
# uncertainty, and chapter 07 shows how much that uncertainty weighs on a regression's signal.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("TJEPA_SMOKE") == "1"
DATA_DIR = "../data/smoke" if SMOKE else "../data"

# %%
from pathlib import Path

import torch
from IPython.display import HTML, display

from tjepa import data, plot
from tjepa.attention import attention_groups, dense_mask
from tjepa.masking import MaskingConfig, MaskSampler, span_statistics

bins_dir = Path(DATA_DIR) / "tinytales"
if not bins_dir.exists():  # notebook 01 makes it; this makes the chapter stand alone
    data.prepare("tinytales", bins_dir, max_documents=2_000)
bins = data.TokenBins(bins_dir)
tokens, lengths = bins.split("val").batch(torch.arange(8).numpy(), block_size=192)
token_strings = [bins.vocab.decode_tokens(t[:n].tolist()) for t, n in zip(tokens, lengths, strict=True)]

# %% [markdown]
# ## The UL2 mixture on real sentences
# Each view draws one denoiser. Context is blue, each target span has its own colour.

# %%
config = MaskingConfig("ul2", views=3)
batch = MaskSampler(config, seed=0)(tokens, lengths)
for view in range(3):
    name = config.denoisers[int(batch.denoiser[view])].name
    display(HTML(plot.masking_html(token_strings[0], plot.view_roles(batch, view), name)))

# %%
roles = [plot.view_roles(batch, v) for v in range(12)]
plot.masking_figure(roles, [config.denoisers[int(d)].name for d in batch.denoiser[:12]]);

# %% [markdown]
# ## The rules, checked
# Context and targets never overlap; each span is contiguous; S targets are a suffix.

# %%
for v in range(len(batch.document)):
    context = set(batch.context_positions[v][batch.context_valid[v]].tolist())
    targets = batch.target_positions[v][batch.target_valid[v]].tolist()
    assert context and targets and not context & set(targets)
    if config.denoisers[int(batch.denoiser[v])].kind == "suffix":
        n = int(batch.lengths[batch.document[v]])
        assert targets == list(range(n - len(targets), n)) and max(context) < targets[0]
print("disjoint, contiguous, suffixes where they should be")

# %% [markdown]
# ## The predictor's attention mask
# Rows are queries, columns keys: context first, then the packed target spans. Context sees
# only context; each span sees the context and itself; padding sees only itself.

# %%
plot.attention_figure(batch, 0);

# %%
groups = attention_groups(batch)
mask = dense_mask(groups)[:, 0]
is_context, is_target = groups == 0, groups > 0
assert not (mask & is_context[:, :, None] & is_target[:, None, :]).any()  # context ↛ targets
cross_span = is_target[:, :, None] & is_target[:, None, :] & (groups[:, :, None] != groups[:, None, :])
assert not (mask & cross_span).any()  # no span sees another span

# %% [markdown]
# ## The rule, written out
# Every token of the predictor's input has a *group*: 0 for context, span + 1 for a mask token
# of a target span, -1 for padding. The whole rule, one query–key pair at a time, is three
# cases. Context must not see targets, or the context embeddings would carry the answers; a
# span must not see another span, or each would copy its neighbours' answers instead of
# predicting them from the context. `tjepa.attention.may_attend` does the same on tensors.

# %%
def may_attend_by_hand(query: int, key: int, same_token: bool) -> bool:
    if query >= 0 and key == 0:  # every real token sees the context
        return True
    if query > 0 and query == key:  # a target sees its own span
        return True
    return same_token  # padding sees itself alone, so no softmax row is empty


g = groups[0].tolist()
by_hand = torch.tensor([[may_attend_by_hand(q, k, i == j) for j, k in enumerate(g)]
                        for i, q in enumerate(g)])
assert torch.equal(by_hand, dense_mask(groups[:1])[0, 0])
print(f"{len(g)} × {len(g)} pairs: the written-out rule and tjepa's mask agree")

# %% [markdown]
# ## Statistics over many views
# Each denoiser's measured target rate and span length match its settings.

# %%
many = MaskSampler(MaskingConfig("ul2", views=8), seed=1)(*bins.split("train").batch(
    torch.arange(256).numpy(), block_size=192))
stats = span_statistics(many, config)
for name, s in stats.items():
    print(f"{name:10s} views {s['views']:4d}  target rate {s['target_rate']:.2f}  "
          f"mean span {s['mean_span']:5.1f}  spans {s['spans']:4.1f}")
for d in config.denoisers:
    assert abs(stats[d.name]["target_rate"] - d.rate) < 0.03

# %% [markdown]
# ## Try it
# The static view first (what you see without a widget frontend), then controls that redraw
# it: denoiser kind, rate, mean span length, seed.

# %%
html, figure = plot.denoiser_view(tokens, lengths, token_strings, "span", 0.3, 5.0, seed=0)
display(HTML(html))

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt


def redraw(kind, rate, mean_span, seed):
    html, _ = plot.denoiser_view(tokens, lengths, token_strings, kind, rate, mean_span, seed)
    display(HTML(html))
    plt.show()


widgets.interact(
    redraw,
    kind=widgets.Dropdown(options=["span", "suffix"], value="span", description="denoiser"),
    rate=widgets.FloatSlider(value=0.3, min=0.05, max=0.9, step=0.05, description="rate"),
    mean_span=widgets.FloatSlider(value=5, min=1, max=64, step=1, description="span length"),
    seed=widgets.IntSlider(value=0, min=0, max=100, description="seed"),
);

# %% [markdown]
# ## Summary
#
# - A view is a context and target spans over one document; `MaskSampler` draws one denoiser
#   per view from the mixture, all views of a batch at once (no Python loop per view).
# - R asks for local infilling, X for much from little, S for the end from the beginning.
# - The predictor's attention rule: context sees context, a span sees the context and itself,
#   padding sees itself. Context never sees a target; no span sees another.
#
# ## References
#
# - Tay et al. 2022, *UL2: Unifying Language Learning Paradigms*: §3.1.1 (R, X and S
#   denoisers), §3.1.2 (the mixture and its rates), §5 (what the mix buys).
# - Assran et al. 2023, *I-JEPA*: §3 (several target blocks per context, predicted in one pass).
# - Raffel et al. 2020, *T5*: §3.3 (span corruption: rates and span lengths).
#
# ## Exercises
#
# **1. A denoiser of your own.** Hide every third sentence (the 3rd, 6th, …) of the first
# story: write the target positions from the tokens alone (a sentence ends at a token holding
# `.`, `!` or `?`), draw the view with `plot.masking_html`, and check that the hidden tokens
# are a third of the sentences, each span contiguous and ending a sentence.

# %% tags=["solution"]
import numpy as np  # noqa: E402

words = token_strings[0]
ends = [i for i, w in enumerate(words) if any(mark in w for mark in ".!?")]
starts = [0, *[e + 1 for e in ends[:-1]]]
sentences = list(zip(starts, ends, strict=True))  # (first token, last token) of each
hidden = sentences[2::3]
roles = np.full(len(words), -1)  # context
for span, (first, last) in enumerate(hidden):
    roles[first : last + 1] = span
display(HTML(plot.masking_html(words, roles, "every third sentence")))
targets = np.flatnonzero(roles >= 0)
assert len(hidden) == len(sentences) // 3
assert all(np.all(np.diff(np.flatnonzero(roles == k)) == 1) for k in range(len(hidden)))
assert all(any(mark in words[last] for mark in ".!?") for _, last in hidden)
print(f"{len(hidden)} of {len(sentences)} sentences hidden: {len(targets)} of {len(words)} tokens")

# %% [markdown]
# **2. S is a suffix of the right size.** In the 8-view batch `many`, show that every S view's
# targets are the last quarter of its document (within a token of `0.25 × length`).

# %% tags=["solution"]
suffix = [d.kind == "suffix" for d in config.denoisers]
checked = 0
for v in range(len(many.document)):
    if not suffix[int(many.denoiser[v])]:
        continue
    n = int(many.lengths[many.document[v]])
    targets = many.target_positions[v][many.target_valid[v]]
    assert abs(len(targets) - 0.25 * n) <= 1 and int(targets[-1]) == n - 1
    checked += 1
assert checked > 0
print(f"{checked} S views: each hides the last quarter of its story")

# %% [markdown]
# **3. One extreme denoiser.** Build a mixture of a single X denoiser, half the tokens in spans
# of 16 (`Denoiser("X-0.5-16", rate=0.5, mean_span=16)`), draw 4 views of 256 training
# documents, and show that the measured target rate and mean span match.

# %% tags=["solution"]
from tjepa.masking import Denoiser  # noqa: E402

extreme = MaskingConfig(denoisers=[Denoiser("X-0.5-16", rate=0.5, mean_span=16)], views=4)
views = MaskSampler(extreme, seed=2)(*bins.split("train").batch(np.arange(256), block_size=192))
measured = span_statistics(views, extreme)["X-0.5-16"]
print(f"target rate {measured['target_rate']:.3f}, mean span {measured['mean_span']:.1f}")
assert abs(measured["target_rate"] - 0.5) < 0.03
assert 10 < measured["mean_span"] < 22
