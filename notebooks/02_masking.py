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
# A *view* of a document splits its tokens into **context** (what the context encoder reads)
# and **target spans** (what the predictor must predict, in embedding space). Which split is
# drawn comes from a mixture of UL2 denoisers (`tjepa/masking.py`):
#
# - **R** (regular): short spans, low rate — local infilling;
# - **X** (extreme): long spans or a high rate — much from little;
# - **S** (sequential): the end of the document from its beginning.

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
