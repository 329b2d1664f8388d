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
# **You will learn** what one training run does step by step (the loop of `tjepa/train.py`),
# which schedules move the learning rate, the weight decay and the target encoder's momentum,
# how to read a run's curves and throughput, and how a run stops and resumes exactly. **Before
# you start:** chapters 03 (one JEPA step) and 04 (collapse and the EMA target); AdamW,
# Loshchilov & Hutter 2019, §2; I-JEPA, Assran et al. 2023, Appendix A (the schedules used
# here).
#
# ## The question
# Chapters 03 and 04 built one step and the guards around it. What turns that step into a run
# that learns? Three schedules and a loop. The learning rate warms up linearly, then follows a
# cosine to `min_lr`: a warm-up keeps the first, noisy gradients from throwing the weights
# far, and the cosine settles them. The weight decay rises along a cosine from `weight_decay`
# to `final_weight_decay`. The EMA momentum rises linearly from `ema_momentum` to
# `final_ema_momentum` (1.0): early on the target encoder follows the context encoder closely,
# because both are still far from good; late it barely moves, so the targets hold still while
# the context encoder (and the predictor, where there is one) fine-tune against them. All
# three are I-JEPA's.
#
# The full run goes through exactly the code path of `python -m tjepa.train`: a config, the
# loop in `tjepa/train.py`, a run folder with metrics and checkpoints. Which config depends on
# where this notebook runs:
#
# - **on a GPU**, `configs/tinystories.toml`: 8 layers of width 384, 20,000 steps, compiled
#   with flex_attention and bf16; its step time and memory per batch size on a card are in
#   `docs/performance.md` (about 15 GiB at batch 64 on an H200, and at the step time measured
#   there, about 22 minutes for the run);
# - **on a CPU**, `configs/tinystories_cpu.toml`: the default 4-layer model of width 128 for
#   1,200 steps at a learning rate that moves a vocabulary of thousands of words in a short
#   run, about ten minutes on a 2-core laptop (up to twice that on a slower one) and under
#   2 GiB of memory (the measured time: `docs/performance.md`).
#
# Both train chapter 03's JEPA: a predictor regresses the EMA target encoder's last layer,
# layer-normed, by smooth L1, with chapter 04's VICReg terms against collapse. What it learns
# on real text, against random init, the shortcuts and a masked LM trained at the same budget,
# is in `docs/results.md`.
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
# After the run, the chapter writes out one training step and checks it against
# `tjepa.step`, then reads the curves, the throughput and the EMA update.

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
# ## One step, written out
# Every step of that run is one call of `tjepa.step.TrainingStep`, and it reads like I-JEPA's:
# (1) forward and backward, (2) clip the gradients and step the optimizer, (3) move the target
# encoder. Here are its few lines, on a fresh model built from the run's own config (on the
# CPU, uncompiled) and one batch of its data, taken once by `TrainingStep` and once by hand
# from the same start; the two must land on the same weights.

# %%
from tjepa.batches import mask_sampler
from tjepa.step import TrainingStep

resolved = runs.load_config(Path(OUT) / "config.toml",  # the run's config: vocabulary set
                            ['train.device="cpu"', "train.compile=false",
                             'model.attention="sdpa"'])
loader = data.DocumentLoader(data.TokenBins(resolved.data.dir).split("train"),
                             resolved.data.batch_size, resolved.data.block_size,
                             resolved.train.seed, resolved.data.min_tokens)
sampler = mask_sampler(resolved)
reference, written_out = (TrainingStep(resolved, torch.device("cpu")) for _ in range(2))
batch = reference.split(sampler(*loader.next_batch()))  # masks drawn on the batch thread
reference(0, batch)

model, optimizer = written_out.model, written_out.optimizer
written_out.schedule.apply(optimizer, 0)  # the learning rate and weight decay of step 0
(part,) = batch.parts  # one process, no gradient accumulation: one part
# 1. forward: targets from the target encoder, predictions from the context; backward
loss_sum, n_targets, regularizer = model(part)
loss = loss_sum / batch.total_targets  # the mean over every target of the global batch
(resolved.objective.prediction_weight * loss + regularizer).backward()
# 2. clip and step the optimizer
if resolved.optim.grad_clip > 0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), resolved.optim.grad_clip)
optimizer.step()
optimizer.zero_grad(set_to_none=True)
# 3. momentum update of the target encoder
model.update_target(written_out.schedule.momentum(0))

for (name, ours), theirs in zip(model.state_dict().items(),
                                reference.model.state_dict().values(), strict=True):
    assert torch.allclose(ours, theirs, atol=1e-6), name
print(f"{len(model.state_dict())} tensors after one step: the written-out step and "
      "tjepa.step agree")

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

# %% [markdown]
# ## Summary
#
# - `python -m tjepa.train --config FILE` and `train.train(config, run_dir)` are one code path:
#   a resolved `config.toml`, `metrics.jsonl`, `last.pt` and `best.pt` in the run folder.
# - Each step: masks drawn on the batch thread, one forward and backward pass, an AdamW step
#   under the learning-rate and weight-decay schedules, then the EMA update of the target.
# - The momentum rises to 1 over the run, so the targets settle as the model does.
# - A stopped run resumes from `last.pt` on the very losses the straight run would log.
#
# ## References
#
# - Assran et al. 2023, *I-JEPA*: Appendix A (the cosine learning rate with warm-up, the
#   weight-decay schedule, the EMA momentum from 0.996 to 1.0).
# - Grill et al. 2020, *BYOL*: §3.2 (the target network's momentum and its increase to 1).
# - Loshchilov & Hutter 2019, *Decoupled Weight Decay Regularization*: §2 (AdamW).
# - Karpathy, nanoGPT, `train.py` (a training loop that reads top to bottom).
#
# ## Exercises
#
# **1. The schedules, written out.** Write the learning rate and the momentum at a step from the
# config alone (the formulas above), and check them against what the run logged: a record at
# step `s` holds the values of the step just taken, `s − 1`.

# %% tags=["solution"]
import math  # noqa: E402

optim, total = config.optim, config.train.max_steps


def lr_at(step: int) -> float:
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
    return optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def momentum_at(step: int) -> float:
    progress = min(1.0, step / total)
    return optim.ema_momentum + (optim.final_ema_momentum - optim.ema_momentum) * progress


for record in records:
    assert math.isclose(record["lr"], lr_at(record["step"] - 1), rel_tol=1e-9)
    assert math.isclose(record["momentum"], momentum_at(record["step"] - 1), rel_tol=1e-9)
print(f"{len(records)} logged steps: the written-out schedules and the run agree")

# %% [markdown]
# **2. Stop and resume.** Train a tiny config for 20 steps straight; then train it again, stopped
# at step 10 (`stop_at=10`) and resumed (`resume=True`). Show that the two runs log the same
# losses at every step.

# %% tags=["solution"]
import json  # noqa: E402

tiny_data = Path(DATA_DIR) / "tinytales"
if not tiny_data.exists():
    data.prepare("tinytales", tiny_data, max_documents=2_000)
tiny = runs.load_config(CPU_CONFIG, [
    f"data.dir={json.dumps(str(tiny_data))}", "data.batch_size=4", "model.dim=32",
    "model.depth=1", "model.heads=2", "model.predictor_dim=16", "model.predictor_depth=1",
    "model.predictor_heads=2", "train.max_steps=20", "train.log_interval=2",
    "train.eval_interval=10", "train.checkpoint_interval=10", "optim.warmup_steps=2",
    "monitor.interval=10", "monitor.documents=16", 'train.device="cpu"'])
train.train(tiny, Path(OUT) / "straight", progress=False)
train.train(tiny, Path(OUT) / "resumed", stop_at=10, progress=False)
train.train(tiny, Path(OUT) / "resumed", resume=True, progress=False)
straight = {r["step"]: r["loss"] for r in runs.read_metrics(Path(OUT) / "straight")}
resumed = {r["step"]: r["loss"] for r in runs.read_metrics(Path(OUT) / "resumed")}
assert straight == resumed and len(straight) >= 10
print(f"{len(straight)} logged losses, equal bit for bit")
