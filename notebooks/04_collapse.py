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
# # 04 · Collapse: watching for it, and seeing it happen
#
# A JEPA can lower its loss by making every embedding alike (complete collapse) or by
# squeezing them into a few directions (dimensional collapse). `tjepa/monitor.py` measures both
# encoders on a fixed held-out batch during training: **RankMe** (effective rank) of tokens and
# of mean-pooled documents, **std** of normalized embeddings, and **SIGReg**. The alarm rests on
# RankMe, because std misses dimensional collapse, and judges it twice: against a fixed line
# (a tenth of the width) and against the run's own peak (a fall below half of it), which
# catches a partial collapse that stays above any fixed line.
#
# Two runs: the default config (EMA target with VICReg's variance and covariance terms,
# healthy) and `configs/collapse_demo.toml` (no EMA, a tiny
# predictor, a high learning rate; 400 steps), which collapses on purpose.

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
assert monitor.rankme(plane) < 3 and monitor.embedding_std(plane) > 0.5 / 8

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
    assert math.isclose(rankme_by_hand(x), monitor.rankme(x), rel_tol=1e-4)
print(f"by hand: healthy {rankme_by_hand(healthy):.1f}, plane {rankme_by_hand(plane):.2f}")

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
