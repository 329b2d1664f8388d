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
# **You will learn** how to ask a frozen encoder what it knows with linear probes, which
# baselines a skeptic asks for and why each one, how to read a probe's margin and the
# headline *training gain*, and how large a margin must be before it is a finding. **Before
# you start:** chapter 05 (a trained run); logistic regression; Alain & Bengio 2017 on linear
# probes, §3; Conneau et al. 2018 (SentEval's probing tasks), §3.
#
# ## The question
# A JEPA's loss says how well it predicts its own targets, which it chose itself: a low loss
# can mean a good encoder or a trivial one (chapter 04). What a user wants to know is whether
# the embeddings hold something about the text that was not handed to them: a story's
# characters, its order, its ending. A **linear probe** asks exactly that: fit a logistic
# regression on frozen embeddings for a labelled question and score it on held-out stories.
# Linear, because a deep probe could compute the answer itself from almost any input; a
# linear one only reads what the embedding already makes explicit.
#
# A probe's accuracy alone says little: many questions are answerable from the story's
# surface. So every probe is scored beside baselines, and only the margin over the best of
# them counts.
#
# A JEPA has no output to read, so we ask what its frozen embeddings make *linearly*
# readable (`tjepa/probe.py`, `python -m tjepa.eval RUN`), always next to **baselines** a
# skeptic would ask for: a **random-init encoder** of the same shape, and shortcuts that read
# no context at all — the story's **length**, a **bag of words** (token counts), a
# **positional bag of words** (token counts in each quarter of the text: where words sit, and
# nothing else) and a **bag of embeddings** (the mean of the input token embeddings). Each
# probe reports its *best baseline* and the trained encoder's *margin* over it.
#
# The `story` probes ask about a whole story. On any text: whether two chunks come from the
# same story (`same_story`: a bag of words reads shared names, so it is a strong baseline),
# whether a story's halves were swapped (`order:halves`) and whether eight words in its middle
# were shuffled (`order:words`). The altered and the original versions hold the same tokens,
# so length and a bag of words read nothing there *by construction* — this notebook checks
# it. Swapped halves do move words, though: the opening's "Once upon a time" and the ending's
# last words land in the wrong quarters, and the positional bag of words reads that with no
# context at all. A probe is only as good as the strongest shortcut it was checked against.
# On tinytales, factor probes ask who the friend is and how the story ends. The `sentences`
# probes ask about the order and coherence of a story's sentences (two words swapped in one,
# a pair of sentences in their order or not, where a moved sentence came from, a sentence
# from another story).
#
# **The headline.** A probe some shortcut reads at 0.9 or better cannot show what the encoder
# learned: the shortcut already answers it. So the headline, the **training gain**, leaves
# those probes out and asks what training added where no shortcut reaches: the mean of
# *trained − random init* over the remaining document probes. Beside it, the report names the
# probes **passed**: those the trained encoder reads better than its best baseline, random
# init and every shortcut, by at least 0.05: about two standard deviations of one probe's
# sampling noise on a few hundred stories (exercise 2).
#
# This notebook evaluates the run notebook 05 trained (in smoke mode, its few-step run).

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("TJEPA_SMOKE") == "1"
RUN = "../out/notebooks/training"  # the run of notebook 05
MAX_DOCUMENTS = 300 if SMOKE else 2_000
RANDOM_INITS = 1 if SMOKE else 3  # random-init twins whose mean is the baseline

# %%
import math
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
print(tjepa_eval.headline_line(report))
print("out of the headline, a shortcut reads them at 0.9 or better:",
      ", ".join(r.name for r in results if r.baselines and not r.in_headline))
for r in results:
    assert 0 <= r.trained <= 1 and 0 <= r.random_init <= 1
    assert r.best_baseline == max([r.random_init, *r.baselines.values()])
for name in ("order:halves", "order:words"):  # same tokens: the shortcuts read nothing
    shortcuts = by_name[name].baselines
    assert abs(shortcuts["length"] - 0.5) < 0.15 and abs(shortcuts["bag_of_words"] - 0.5) < 0.15
# where the words sit is enough to tell swapped halves
assert by_name["order:halves"].baselines["positional_words"] > 0.8
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
# The token readout, fit on the targets at every token, applied to the predictor's outputs at
# hidden positions: which words does the predictor "think" fill each span? The predictor was
# trained to land on the targets, so the readout fitted on the targets reads its outputs in
# the space they were trained in.

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

# %% [markdown]
# ## Summary
#
# - A probe is a logistic regression on frozen, mean-pooled embeddings, scored on held-out
#   stories; linear, so it reads what the embedding makes explicit.
# - Baselines: a random-init encoder of the same shape (what architecture alone gives), the
#   story's length, a bag of words, a positional bag of words and a bag of embeddings (what
#   the surface gives). A probe's margin is its accuracy minus the best of them.
# - The headline, the training gain, is what training added to random init over the probes
#   no shortcut reads at 0.9; the probes passed are those with a margin of 0.05 or more.
# - Probes whose altered and original texts share their tokens (the order probes) cannot be
#   passed by a bag of words; `same_story` can, and a bag of words reads it well.
# - Sharing tokens is not enough: a positional bag of words reads swapped halves from where
#   the opening's and the ending's words went. A margin counts only over the strongest
#   shortcut a skeptic can name.
# - A margin is a finding only well beyond the probe's sampling noise (exercise 2).
#
# ## References
#
# - Alain & Bengio 2017, *Understanding intermediate layers using linear classifier probes*:
#   §3 (linear probes on frozen features).
# - Conneau et al. 2018, *What you can cram into a single vector* (SentEval probing): §3
#   (bigram shift and the other probing tasks; bag-of-words baselines).
# - Hewitt & Liang 2019, *Designing and Interpreting Probes with Control Tasks*: §2 (why a
#   probe needs a baseline to mean anything).
# - Garrido et al. 2023, *RankMe*: §4 (label-free numbers against probe accuracy).
#
# ## Exercises
#
# **1. The headline number, by hand.** From `results`, keep the document probes (kinds
# `story`, `sentences` and `nonlinear`) whose best shortcut reads under 0.9; take each one's
# *trained − random init* and their mean, and check it against `report["training_gain"]`.
# Then list the probes whose margin over the best baseline is 0.05 or more, and check them
# against `report["passed"]`.

# %% tags=["solution"]
headline = [r for r in results if r.kind in ("story", "sentences", "nonlinear")
            and max(r.baselines.values()) < 0.9]
added = {r.name: r.trained - r.random_init for r in headline}
for name, gain in added.items():
    print(f"{name:24s} trained − random init {gain:+.3f}")
assert math.isclose(float(np.mean(list(added.values()))), report["training_gain"],
                    abs_tol=1e-4)
passed = [r.name for r in results if r.baselines
          and r.trained - max([r.random_init, *r.baselines.values()]) >= 0.05]
assert passed == report["passed"]

# %% [markdown]
# **2. When is a margin a finding?** An accuracy measured on `n` validation examples has a
# sampling standard deviation of about `√(p(1 − p)/n)`. Compute it for `order:halves` at 0.5
# with its `n_val`, then simulate 2,000 probes that guess at random on `n_val` examples and
# check that their accuracies spread by that much.

# %% tags=["solution"]
halves = by_name["order:halves"]
std = math.sqrt(0.25 / halves.n_val)
guesses = np.random.default_rng(0).integers(0, 2, size=(2_000, halves.n_val)).mean(1)
print(f"order:halves on {halves.n_val} examples: noise ±{std:.3f} (1 std); a margin under "
      f"{2 * std:.3f} is within two")
assert abs(float(guesses.std()) - std) < 0.15 * std

# %% [markdown]
# **3. Why a bag of words reads nothing in `order:halves`.** Swap the halves of the first
# validation story. Show that its token counts are unchanged while the encoder's pooled
# embedding is not.

# %% tags=["solution"]
story = val.document(0)[: config.data.block_size]
half = len(story) // 2
swapped = np.concatenate([story[half:], story[:half]])
assert np.array_equal(np.bincount(story), np.bincount(swapped))  # the same bag of words
pair, pair_lengths = probe.pad([story, swapped])
embedded = probe.pooled(model.target_encoder, pair, pair_lengths)
assert not torch.allclose(embedded[0], embedded[1], atol=1e-4)
print(f"same counts; embeddings differ by {float((embedded[0] - embedded[1]).norm()):.3f} "
      f"(norm {float(embedded[0].norm()):.3f})")

# %% [markdown]
# **4. What a positional bag of words sees.** Count the tokens of each quarter of `story` and
# of `swapped` by hand, check them against `probe.positional_words`, and show that the counts
# differ although the bag of words does not.

# %% tags=["solution"]
def quarter_counts(tokens: np.ndarray) -> np.ndarray:
    n = len(tokens)
    counts = np.zeros((probe.POSITION_PARTS, probe.BAG_OF_WORDS_BUCKETS))
    for i, t in enumerate(tokens):
        counts[probe.POSITION_PARTS * i // n, t % probe.BAG_OF_WORDS_BUCKETS] += 1
    return counts * probe.POSITION_PARTS / n


by_quarter = probe.positional_words(pair, pair_lengths)  # (2, parts · buckets)
for row, tokens in enumerate((story, swapped)):
    assert np.allclose(by_quarter[row].numpy(), quarter_counts(tokens).ravel(), atol=1e-6)
moved = int((quarter_counts(story) != quarter_counts(swapped)).any(1).sum())
print(f"the same bag of words; the counts differ in {moved} of {probe.POSITION_PARTS} quarters")
assert moved > 0
