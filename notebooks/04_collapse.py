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
# # 04 · Collapse: why it threatens, why it mostly does not happen, and how to see it
#
# **You will learn** why a JEPA can lower its loss by learning nothing, why the stop-gradient
# and the slowly moving target encoder take away that shortcut's pull, how RankMe sees a
# collapse that the loss hides, and what a run's own numbers can and cannot say, with no
# labels, about whether it is learning. **Before you start:** chapter 03 (the three networks and the loss); a
# singular value decomposition; BYOL, Grill et al. 2020, §3; SimSiam, Chen & He 2021, §4–5.
#
# ## The question
# The predictor regresses the target encoder's embeddings. If every embedding were one and the
# same vector, the predictor could output it everywhere and the loss would be zero. Nothing
# in the loss says the embeddings must differ between documents. So why does a JEPA learn
# anything at all?
#
# Two kinds of failure have names: **complete collapse**, every embedding alike, and
# **dimensional collapse**, embeddings that differ but only along a few directions of the
# space. `tjepa/monitor.py` measures both encoders on a fixed held-out batch during training:
# **RankMe** (effective rank) of tokens and of mean-pooled documents, the **std** of
# normalized embeddings, and **SIGReg** (how far the embeddings are from an isotropic
# Gaussian: near 0.5 for Gaussian embeddings, far higher for collapsed ones). The alarm fires
# when the token std falls below a fifth of `1/√width` (the std of normalized embeddings spread
# over every direction), and, because std misses dimensional collapse, on RankMe twice:
# against a fixed line (a tenth of the width) and against the run's own peak (a fall below
# half of it), which catches a partial collapse that stays above any fixed line.
#
# The target encoder here is an exponential moving average (EMA) of the context encoder: after
# every step, `target ← m · target + (1 − m) · context`, with the momentum `m` close to 1
# (chapter 05 writes the update out). At `m = 0` the target is simply a copy of the context
# encoder.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("TJEPA_SMOKE") == "1"
DATA_DIR = "../data/smoke" if SMOKE else "../data"
STEPS = 60 if SMOKE else None  # None: the default config's train.max_steps
COLLAPSE_STEPS = 60 if SMOKE else 400  # the demo collapses within a few dozen steps
OUT = "../out/notebooks"

# %%
import json
import math
import warnings
from pathlib import Path

import torch

from tjepa import data, monitor, plot, runs, train

bins_dir = Path(DATA_DIR) / "tinytales"
if not bins_dir.exists():
    data.prepare("tinytales", bins_dir, max_documents=2_000)

# %% [markdown]
# ## Why std is not enough
# Points on a 2-D plane inside a 64-D space look healthy to std; RankMe and SIGReg see that
# only two directions are used.

# %%
g = torch.Generator().manual_seed(0)
healthy = torch.randn(2000, 64, generator=g)
plane = torch.randn(2000, 2, generator=g) @ torch.randn(2, 64, generator=g)
for name, x in [("healthy", healthy), ("plane", plane)]:
    print(f"{name:8s} RankMe {monitor.rankme(x):5.1f}  std {monitor.embedding_std(x):.3f}  "
          f"SIGReg {float(monitor.sigreg(x)):7.1f}")
assert monitor.rankme(plane) < 3
assert monitor.embedding_std(plane) > 0.5 / 64**0.5  # above half of 1/√width: std sees no problem
assert float(monitor.sigreg(plane)) > 10 * float(monitor.sigreg(healthy))

# %% [markdown]
# RankMe is the exponential of the entropy of the normalized singular values: if the
# embeddings spread evenly over k directions, it is k. Written out (directions with a singular
# value of 0 add nothing: 0 · log 0 = 0; `tjepa.monitor.rankme` adds a tiny epsilon instead,
# hence the relative tolerance):

# %%
def rankme_by_hand(x: torch.Tensor) -> float:
    singular = torch.linalg.svdvals(x.double())
    p = singular / singular.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


for x in (healthy, plane):
    assert math.isclose(rankme_by_hand(x), monitor.rankme(x), rel_tol=1e-3)
print(f"by hand: healthy {rankme_by_hand(healthy):.1f}, plane {rankme_by_hand(plane):.2f}")

# %% [markdown]
# ## Why the stop-gradient matters: one derivative
# Take a linear encoder `W`, two noisy views of the same latent (the context and the target),
# and the best linear predictor `A` for that encoder. Scale the encoder by `α` and ask how the
# loss changes as `α` moves away from 1: the slope `dL/dα` is the gradient's pull towards a
# smaller encoder, that is, towards collapse.
#
# - If the gradient also flows through the targets, the loss is `α²·L`, so `dL/dα = 2L > 0`:
#   shrinking the encoder *always* lowers the loss, and gradient descent walks towards zero.
# - With the targets held fixed (the stop-gradient), `dL/dα = 2·E⟨p, p − t⟩` for predictions
#   `p` and targets `t`. For the least-squares predictor the residual `t − p` is orthogonal to
#   every linear function of the context, `p` included, so the slope is 0: shrinking buys
#   nothing.
#
# tjepa layer-norms its targets, so their overall scale cannot shrink. Its collapse is the
# embeddings' *differences* shrinking: every token's embedding moving towards one shared
# vector. The toy's embeddings have mean zero, so `α` scales exactly those differences, and the
# same two derivatives apply to them.

# %%
g = torch.Generator().manual_seed(1)
latent = torch.randn(4096, 32, generator=g)
context_view = latent + 0.5 * torch.randn(4096, 32, generator=g)
target_view = latent + 0.5 * torch.randn(4096, 32, generator=g)
W = torch.randn(32, 8, generator=g) / 32**0.5  # a linear encoder to 8 dimensions
A = torch.linalg.lstsq(context_view @ W, target_view @ W).solution  # the best predictor


def slope(stop_gradient: bool) -> tuple[float, float]:
    """The loss and its derivative with respect to the encoder's scale α, at α = 1."""
    alpha = torch.ones((), requires_grad=True)
    predictions = (alpha * context_view @ W) @ A
    targets = alpha * target_view @ W
    if stop_gradient:
        targets = targets.detach()
    loss = (predictions - targets).square().sum(1).mean()
    (derivative,) = torch.autograd.grad(loss, alpha)
    return float(loss), float(derivative)


through, through_slope = slope(stop_gradient=False)
stopped, stopped_slope = slope(stop_gradient=True)
print(f"gradient through the targets: L = {through:.4f}, dL/dα = {through_slope:+.4f} (= 2L)")
print(f"stop-gradient:                L = {stopped:.4f}, dL/dα = {stopped_slope:+.4f}")
assert math.isclose(through_slope, 2 * through, rel_tol=1e-4)
assert abs(stopped_slope) < 1e-3 * through

# %% [markdown]
# That is the core of the stop-gradient argument in a linear toy (BYOL §3.2 makes it with an
# optimal predictor and conditional variances; SimSiam §5 frames it as an alternating
# optimization), and its limit is visible too: it holds for a predictor near its optimum. The
# stop-gradient keeps the context encoder from moving its targets within a step; the **EMA
# target encoder** keeps them slow *across* steps, so the predictor, trained every step, can
# stay near its optimum for targets that change little (BYOL's ablations, §5; DirectPred, Tian
# et al. 2021, makes the predictor's role exact for linear networks). It is an argument for
# why collapse is not *favoured*, not a proof that it cannot happen. The demo
# below collapses with the stop-gradient still on: its predictor is tiny, far from optimal, and
# its targets move as fast as the encoder (momentum 0). tjepa's default adds VICReg's variance
# and covariance terms (Bardes et al. 2022, §4.1) as a second guard, because EMA alone lost rank
# on tinytales (docs/lab/anti-collapse.md).

# %% [markdown]
# ## A healthy run and a collapsing one

# %%
common = [f"data.dir={json.dumps(str(bins_dir))}", "monitor.interval=20",
          "monitor.documents=128", "train.eval_interval=1000", "train.device=\"cpu\""]
healthy_config = runs.load_config(
    "../configs/default.toml", [*common, *([f"train.max_steps={STEPS}"] if STEPS else [])])
collapse_config = runs.load_config(
    "../configs/collapse_demo.toml",
    [*common, f"train.max_steps={COLLAPSE_STEPS}", "monitor.stop_on_alarm=false"])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    healthy_run = train.train(healthy_config, Path(OUT) / "healthy", progress=not SMOKE)
    collapse_run = train.train(collapse_config, Path(OUT) / "collapse", progress=not SMOKE)
print([str(w.message) for w in caught if "collapse alarm" in str(w.message)])

# %%
metrics = {"default": runs.read_metrics(Path(OUT) / "healthy"),
           "collapse demo": runs.read_metrics(Path(OUT) / "collapse")}
alarm = monitor.CollapseAlarm(healthy_config.monitor, healthy_config.model.dim)
plot.collapse_figure(metrics, alarm_line=alarm.rankme_line);

# %% [markdown]
# The default run stays above the alarm line; the collapse demo falls below it within a few
# dozen steps — while its loss looks *better*.

# %%
healthy_rankme = [r["rankme"] for r in metrics["default"] if "rankme" in r]
collapse_rankme = [r["rankme"] for r in metrics["collapse demo"] if "rankme" in r]
print(f"default: RankMe ≥ {min(healthy_rankme):.1f}, alarm at {healthy_run['collapse_alarm_step']}")
print(f"collapse demo: RankMe down to {min(collapse_rankme):.1f}, "
      f"alarm at step {collapse_run['collapse_alarm_step']}")
assert min(healthy_rankme) > alarm.rankme_line and healthy_run["collapse_alarm_step"] is None
assert min(collapse_rankme) < alarm.rankme_line and collapse_run["collapse_alarm_step"] is not None
assert any(r.get("collapse_alarm") for r in metrics["collapse demo"])

# %% [markdown]
# ## Is it learning? What the run's own numbers say
# A healthy RankMe says the run has not collapsed; it does not say the run learns anything
# useful (a random-init encoder has a high RankMe). The other label-free number is the gap
# between the validation loss and the loss of the constant prediction of the targets' mean
# (`val_constant_loss`, chapter 03): the part of the targets the predictor reads from the
# context. It is necessary, not sufficient. A run can beat its constant while its embeddings
# hold nothing a probe wants: a target that is easy to predict from the context, but that
# carries nothing the probes ask about, gives a wide gap and nothing else. Across the
# real-text runs behind `docs/results.md`, neither RankMe nor the gap, nor any other number a
# run shows without labels, orders the runs by what the probes find. So no label-free number
# here replaces the probes of chapter 06;
# RankMe and the gap rule out failures, they do not certify learning. Both runs' gaps:

# %%
for name, records in metrics.items():
    validation = [r for r in records if "val_loss" in r]
    assert validation, f"{name}: the run validates at its end"
    last = validation[-1]
    print(f"{name:14s} step {last['step']:4d}: validation loss {last['val_loss']:.4f}, "
          f"constant {last['val_constant_loss']:.4f}, gap "
          f"{last['val_constant_loss'] - last['val_loss']:+.4f}")

# %% [markdown]
# ## Summary
#
# - Regressing embeddings has a trivial solution: every embedding alike. RankMe (effective
#   rank) and std watch for it; RankMe also catches dimensional collapse, which std misses.
# - With the gradient through the targets, shrinking the encoder always lowers the loss. The
#   stop-gradient removes that pull for a near-optimal predictor; the EMA target keeps the
#   targets still enough for that to hold. VICReg's terms are a second, explicit guard.
# - The alarm fires on a fixed RankMe line, on a fall below half the run's peak, or on a token
#   std below its line, for the target encoder and for the regression targets themselves. A
#   collapsing run's loss looks *better*.
# - RankMe and the gap below the constant rule failures out; neither certifies that a run
#   learns what a user wants: that takes the probes.
#
# ## References
#
# - Grill et al. 2020, *Bootstrap Your Own Latent* (BYOL): §3.1–3.2 (the EMA target network and
#   the predictor), §5 (ablations: without the predictor or with a fast target, it collapses).
# - Chen & He 2021, *Exploring Simple Siamese Representation Learning* (SimSiam): §4 (the
#   stop-gradient is what prevents collapse), §5 (the alternating-optimization hypothesis).
# - Tian, Chen & Ganguli 2021, *Understanding Self-Supervised Learning Dynamics without
#   Contrastive Pairs* (DirectPred): §3 (why the predictor and stop-gradient avoid collapse).
# - Bardes, Ponce & LeCun 2022, *VICReg*: §4.1 (the variance and covariance terms).
# - Garrido et al. 2023, *RankMe*: §3 (effective rank as a label-free quality measure).
# - Balestriero & LeCun 2025, *LeJEPA*: §4 (SIGReg, the isotropic-Gaussian test).
#
# ## Exercises
#
# **1. Rescue the demo with one key.** `configs/collapse_demo.toml` has an EMA at momentum 0
# (its target is a copy of the context encoder), a tiny predictor, a high learning rate and no
# VICReg terms. Add VICReg's terms (`objective.anti_collapse="vicreg"`) and nothing else, train it for as many steps as the
# demo above, and show that the alarm stays quiet where the demo's fired.

# %% tags=["solution"]
rescued_config = runs.load_config(
    "../configs/collapse_demo.toml",
    [*common, f"train.max_steps={COLLAPSE_STEPS}", "monitor.stop_on_alarm=false",
     'objective.anti_collapse="vicreg"'])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    rescued = train.train(rescued_config, Path(OUT) / "rescued", progress=not SMOKE)
rescued_rankme = [r["rankme"] for r in runs.read_metrics(Path(OUT) / "rescued") if "rankme" in r]
print(f"with VICReg's terms: RankMe ≥ {min(rescued_rankme):.1f}, alarm at "
      f"{rescued['collapse_alarm_step']}; without: alarm at {collapse_run['collapse_alarm_step']}")
assert rescued["collapse_alarm_step"] is None and min(rescued_rankme) > alarm.rankme_line

# %% [markdown]
# **2. The alarm's second rule.** A run of width 128 logs a token RankMe of 60, then 50, then
# 25 (its documents stay healthy). The fixed line is 12.8, which 25 never crosses. Does the
# alarm fire, and at which measurement? Answer with `monitor.CollapseAlarm`.

# %% tags=["solution"]
watch = monitor.CollapseAlarm(monitor.MonitorConfig(), width=128)
fired = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for step, value in [(100, 60.0), (200, 50.0), (300, 25.0)]:
        if watch.check({"rankme": value, "std": 0.08, "rankme_doc": 40.0}, step):
            fired.append(step)
assert watch.rankme_line == 12.8 and fired == [300] and watch.tripped_at == 300
print("fires at step 300: 25 is below half the peak of 60, though above the line of 12.8")

# %% [markdown]
# **3. What RankMe counts.** Build 2,000 embeddings in 64 dimensions that use exactly `k = 5`
# orthogonal directions with equal energy, and show that RankMe is 5. Then give one direction
# ten times the amplitude of the others (a hundred times the energy) and show that RankMe
# falls, though the rank is still 5.

# %% tags=["solution"]
directions = torch.linalg.qr(torch.randn(64, 5, generator=g)).Q.T  # (5, 64), orthonormal
codes = torch.randn(2000, 5, generator=g)
codes = codes / codes.norm(dim=0)  # equal energy in each direction
even = codes @ directions
uneven = (codes * torch.tensor([10.0, 1, 1, 1, 1])) @ directions
print(f"equal energy: RankMe {monitor.rankme(even):.2f}; one direction ×10 in amplitude: "
      f"{monitor.rankme(uneven):.2f}; matrix rank {int(torch.linalg.matrix_rank(uneven))}")
assert abs(monitor.rankme(even) - 5) < 0.1
assert monitor.rankme(uneven) < 3 and int(torch.linalg.matrix_rank(uneven)) == 5
