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
# # 05 · Training on TinyStories
#
# The full run goes through exactly the code path of `python -m tjepa.train`: a config from
# `configs/tinystories.toml` (the seed's sizes: 8 layers, width 384, 12 heads; compiled,
# flex_attention, bf16 on a GPU), the loop in `tjepa/train.py`, a run folder with metrics and
# checkpoints. From a terminal, the same run is
#
# ```bash
# python -m tjepa.data --source tinystories --out data/tinystories
# python -m tjepa.train --config configs/tinystories.toml
# ```
#
# In smoke mode (the test run) it trains a tiny model for a few steps on the CPU instead.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("TJEPA_SMOKE") == "1"
DATA_DIR = "../data/smoke" if SMOKE else "../data"
CONFIG = "../configs/tinystories.toml"
OUT = "../out/notebooks/training"

# %%
from pathlib import Path

import torch

from tjepa import data, plot, runs, train

if SMOKE:
    bins_dir = Path(DATA_DIR) / "tinytales"
    if not bins_dir.exists():
        data.prepare("tinytales", bins_dir, max_documents=2_000)
    overrides = [f'data.dir="{bins_dir}"', "data.batch_size=8", "data.block_size=192",
                 "model.dim=64", "model.depth=2", "model.heads=2", "model.predictor_dim=32",
                 "model.predictor_depth=1", "model.predictor_heads=2", "masking.views=1",
                 "train.max_steps=40", "train.compile=false", "train.device=\"cpu\"",
                 "train.pad_multiple=1", "train.log_interval=5", "train.eval_interval=20",
                 "optim.warmup_steps=5", "monitor.interval=20", "monitor.documents=64"]
else:
    bins_dir = Path(DATA_DIR) / "tinystories"
    if not bins_dir.exists():
        data.prepare("tinystories", bins_dir)  # downloads TinyStories once
    overrides = [f'data.dir="{bins_dir}"']
config = runs.load_config(CONFIG, overrides)
print(f"{config.model.depth} layers, width {config.model.dim}, batch {config.data.batch_size}, "
      f"{config.train.max_steps} steps on {'cuda' if torch.cuda.is_available() else 'cpu'}")

# %%
summary = train.train(config, Path(OUT), progress=True)

# %% [markdown]
# ## Curves from `metrics.jsonl`

# %%
records = runs.read_metrics(OUT)
plot.training_figure(records);

# %%
plot.collapse_figure({"target encoder": records});

# %% [markdown]
# `tokens_per_s` counts input tokens per second between two logs; `data_wait` is the share of
# that time the loop spent waiting for the batch thread (masking and packing run there, ahead
# of the step). Near 0, the device sets the pace; well above it, the data does.

# %%
tokens_per_s, data_wait = runs.throughput(records)
print(f"median {tokens_per_s:,.0f} input tokens/s; waiting for batches {data_wait:.1%} of the time")
assert tokens_per_s > 0 and 0 <= data_wait < 1

# %%
losses = [r["loss"] for r in records]
print(f"loss {losses[0]:.4f} → {losses[-1]:.4f}; best validation {summary['best_val_loss']:.4f}")
assert losses[-1] < losses[0]
assert summary["collapse_alarm_step"] is None
assert (Path(OUT) / "best.pt").exists() and (Path(OUT) / "config.toml").exists()
