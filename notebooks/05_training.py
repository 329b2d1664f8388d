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
# The full run goes through exactly the code path of `python -m tjepa.train`: a config, the
# loop in `tjepa/train.py`, a run folder with metrics and checkpoints. Which config depends on
# where this notebook runs:
#
# - **on a GPU**, `configs/tinystories.toml`: 8 layers of width 384, 20,000 steps, compiled
#   with flex_attention and bf16; its step time and memory per batch size on a card are in
#   `docs/performance.md` (tens of minutes and about 15 GiB at batch 64 on an H200);
# - **on a CPU**, `configs/tinystories_cpu.toml`: the default 4-layer model of width 128 for
#   1,200 steps at a learning rate that moves a 9k-word vocabulary in a short run, a quarter
#   of an hour or so on a 2-core laptop and under 2 GiB of memory (measured runs, and what they
#   learn against a masked LM: `docs/experiments.md`).
#
# From a terminal, the same runs are
#
# ```bash
# python -m tjepa.data --source tinystories --out data/tinystories   # or --source FOLDER of .txt
# python -m tjepa.train --config configs/tinystories.toml             # GPU
# python -m tjepa.train --config configs/tinystories_cpu.toml         # CPU
# ```
#
# In smoke mode (the test run) it trains a tiny model for a few steps on the CPU instead.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("TJEPA_SMOKE") == "1"
DATA_DIR = "../data/smoke" if SMOKE else "../data"
GPU_CONFIG = "../configs/tinystories.toml"
CPU_CONFIG = "../configs/tinystories_cpu.toml"
OUT = "../out/notebooks/training"

# %%
from pathlib import Path

import torch

from tjepa import data, plot, runs, train

on_gpu = torch.cuda.is_available()
if SMOKE:
    bins_dir = Path(DATA_DIR) / "tinytales"
    if not bins_dir.exists():
        data.prepare("tinytales", bins_dir, max_documents=2_000)
    config_file = CPU_CONFIG
    overrides = [f'data.dir="{bins_dir}"', "data.batch_size=8", "data.block_size=192",
                 "model.dim=64", "model.depth=2", "model.heads=2", "model.predictor_dim=32",
                 "model.predictor_depth=1", "model.predictor_heads=2", "train.max_steps=40",
                 "train.device=\"cpu\"", "train.log_interval=5", "train.eval_interval=20",
                 "optim.warmup_steps=5", "monitor.interval=20", "monitor.documents=64"]
else:
    bins_dir = Path(DATA_DIR) / "tinystories"
    if not bins_dir.exists():
        data.prepare("tinystories", bins_dir)  # downloads TinyStories once
    config_file = GPU_CONFIG if on_gpu else CPU_CONFIG
    if not on_gpu:
        print("No GPU here: training the CPU-sized config, configs/tinystories_cpu.toml.")
    overrides = [f'data.dir="{bins_dir}"']
config = runs.load_config(config_file, overrides)
print(f"{Path(config_file).name}: {config.model.depth} layers, width {config.model.dim}, "
      f"batch {config.data.batch_size}, {config.train.max_steps} steps on "
      f"{'cuda' if on_gpu else 'cpu'}")

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

# %% [markdown]
# ## The EMA update, written out
# After every optimizer step the target encoder moves a small step towards the context
# encoder: `target ← m · target + (1 − m) · context`, with the momentum `m` rising towards 1
# over the run. The target is thus an average of recent context encoders: it changes slowly,
# so the context encoder cannot lower the loss by dragging its own targets along (collapse),
# and no gradient ever reaches it (stop-gradient). Here the update is applied once by hand and
# once by `JEPA.update_target`, on the run's last checkpoint:

# %%
model, _, _ = runs.load_run(OUT)
momentum = 0.99
with torch.no_grad():
    by_hand = [momentum * target + (1 - momentum) * context
               for target, context in zip(model.target_encoder.parameters(),
                                          model.context_encoder.parameters(), strict=True)]
model.update_target(momentum)
for ours, theirs in zip(by_hand, model.target_encoder.parameters(), strict=True):
    assert torch.allclose(ours, theirs, atol=1e-6)
print(f"{len(by_hand)} parameter tensors: the written-out EMA step and tjepa's agree")

# %%
losses = [r["loss"] for r in records]
print(f"loss {losses[0]:.4f} → {losses[-1]:.4f}; best validation {summary['best_val_loss']:.4f}")
assert losses[-1] < losses[0]
assert summary["collapse_alarm_step"] is None
assert (Path(OUT) / "best.pt").exists() and (Path(OUT) / "config.toml").exists()
