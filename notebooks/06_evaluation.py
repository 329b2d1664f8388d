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
# # 06 · Evaluation: what do the embeddings know?
#
# A JEPA has no output to read, so we ask what its frozen embeddings make *linearly*
# readable (`tjepa/probe.py`, `python -m tjepa.eval RUN`), always next to **baselines** a
# skeptic would ask for: a **random-init encoder** of the same shape, and shortcuts that read
# no context at all — the story's **length**, a **bag of words** (token counts) and a **bag of
# embeddings** (the mean of the input token embeddings). Each probe reports its *best
# baseline* and the trained encoder's *margin* over it.
#
# The `semantic` probes need context. On any text: whether two chunks come from the same story
# (`same_story`: a bag of words reads shared names, so it is a strong baseline), whether a
# story's halves were swapped (`order:halves`) and whether eight words in its middle were
# shuffled (`order:words`). The altered and the original versions hold the same tokens, so
# length and a bag of words read nothing there *by construction* — this notebook checks it.
# On tinytales, factor probes ask who the friend is and how the story ends.
#
# This notebook evaluates the run notebook 05 trained (in smoke mode, its few-step run).

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("TJEPA_SMOKE") == "1"
RUN = "../out/notebooks/training"  # the run of notebook 05
MAX_DOCUMENTS = 300 if SMOKE else 2_000
RANDOM_INITS = 1 if SMOKE else 3  # random-init twins whose mean is the baseline

# %%
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown, display

from tjepa import data, plot, probe, runs
from tjepa import eval as tjepa_eval

assert Path(RUN, "best.pt").exists(), "run notebook 05 first (it trains this run)"
report = tjepa_eval.evaluate_run(RUN, max_documents=MAX_DOCUMENTS, random_inits=RANDOM_INITS)
results = [probe.ProbeResult.from_dict(r) for r in report["probes"]]
display(Markdown(tjepa_eval.probe_table(results)))
plot.probe_figure(results);

# %%
by_name = {r.name: r for r in results}
print(f"mean margin of the semantic probes over their best baseline: "
      f"{report['semantic_gain']:+.3f}")
for r in results:
    assert 0 <= r.trained <= 1 and 0 <= r.random_init <= 1
    assert r.best_baseline == max([r.random_init, *r.baselines.values()])
for name in ("order:halves", "order:words"):  # same tokens: the shortcuts read nothing
    shortcuts = by_name[name].baselines
    assert abs(shortcuts["length"] - 0.5) < 0.15 and abs(shortcuts["bag_of_words"] - 0.5) < 0.15
if "factor:hero" in by_name:  # tinytales: a name is a word, so a bag of words reads it
    hero = by_name["factor:hero"].baselines
    assert max(hero["bag_of_words"], hero["bag_of_embeddings"]) > 0.9
assert by_name["token_identity"].trained > 0.5  # contextual embeddings keep their token

# %% [markdown]
# ## A story's embedding, written out
# Every document probe reads one vector per story: the target encoder's output at each real
# token, averaged over the story's length (padding left out). Written out, against
# `tjepa.probe.pooled`:

# %%
from tjepa.jepa import encode_documents

model, config, vocab = runs.load_run(RUN)
bins = data.TokenBins(config.data.dir)
val = bins.split("val")
tokens, lengths = probe.pad([val.document(d)[: config.data.block_size] for d in range(8)])
h = encode_documents(model.target_encoder, tokens, lengths)  # (B, T, D)
real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]  # (B, T)
by_hand = (h * real[..., None]).sum(1) / lengths[:, None]  # (B, D)
assert torch.allclose(by_hand, probe.pooled(model.target_encoder, tokens, lengths), atol=1e-5)

# %% [markdown]
# ## Nearest stories
# Stories whose embeddings lie closest to a query story.

# %%
documents = np.arange(min(len(val), 300))
features = probe.features_of(lambda t, n: probe.pooled(model.target_encoder, t, n),
                             [val.document(d)[: config.data.block_size] for d in documents])
for index, similarity in probe.nearest_documents(features, query=0, k=3):
    print(f"{similarity:+.3f}  {vocab.decode(val.document(index))[:160]}…")
print("query:", vocab.decode(val.document(0))[:160], "…")
assert len(probe.nearest_documents(features, 0, k=3)) == 3

# %% [markdown]
# ## An embedding map
# The first two principal components of the story embeddings, coloured by a factor.

# %%
factors = bins.factors()
if factors:
    labels, title = [factors["val"]["place"][i] for i in documents], "stories by place"
else:
    lengths = np.array([len(val.document(d)) for d in documents])
    labels = np.where(lengths > np.median(lengths), "longer", "shorter").tolist()
    title = "stories by length"
plot.embedding_map(features.numpy(), labels, f"{title} (PCA of embeddings)");

# %% [markdown]
# ## The decoder lens
# The token readout, fit on target-encoder embeddings, applied to the predictor's outputs at
# hidden positions: which words does the predictor "think" fill each span?

# %%
from tjepa.masking import MaskSampler

train_split = bins.split("train")
x, y = probe.token_features(model, train_split, np.arange(200), config.data.block_size, "cpu")
readout = probe.fit_readout(x, y)
examples = probe.decoder_lens_examples(model, readout, vocab, val, documents,
                                       config.data.block_size, MaskSampler(config.masking, 0))
for ex in examples:
    print("hidden:   ", "".join(ex["hidden"])[:120])
    print("predicted:", "".join(ex["predicted"])[:120], "\n")
assert len(examples) == 3 and all(len(e["hidden"]) == len(e["predicted"]) for e in examples)
