"""The step's time breakdown covers the whole step, times every network both ways, and leaves
the step as it found it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.helpers import tiny
from tjepa import runs
from tjepa.lab import breakdown
from tjepa.step import TrainingStep, resolve_model


def test_breakdown_times_each_network_both_ways_and_the_parts_add_up(tinytales_bins):
    result = breakdown.breakdown(None, steps=2, warmup=1, progress=False,
                                 overrides=tiny(tinytales_bins, "monitor.interval=10",
                                                "train.max_steps=100"))
    parts = result["parts"]
    assert set(breakdown.PARTS) <= set(parts)
    for network in ("target encoder", "context encoder", "predictor"):
        assert parts[f"{network} forward"] > 0
    for part in ("predictor backward", "context encoder backward", "optimizer", "EMA update",
                 "gradient clip"):
        assert parts[part] > 0, part
    assert abs(sum(parts.values()) - result["step_ms"]) < 1e-6
    # the timers' own overhead and the Python between them stay a small share of the step
    assert parts["other"] < 0.2 * result["step_ms"]
    assert result["events"]["monitor"]["count"] == 10  # 100 steps, every 10
    assert result["events"]["validation"]["count"] == 20  # tiny(): eval_interval 5
    tables = breakdown.breakdown_tables(result)
    assert "| context encoder backward |" in tables and "100 steps ×" in tables


def test_step_parts_reads_micro_batches_and_the_clip_from_the_marks():
    marks, t = [], 0.0
    for _ in range(2):  # two micro-batches: forward 1 s each way per network
        for name in ("model>", "target>", "target<", "context>", "context<", "predictor>",
                     "predictor<", "regularizer>", "regularizer<", "model<",
                     "predictor grad>", "predictor grad<", "context grad>"):
            t += 1.0
            marks.append((name, t))
    for name in ("clip>", "clip<", "optimizer>", "optimizer<", "zero_grad>", "zero_grad<",
                 "ema>", "ema<"):
        t += 1.0
        marks.append((name, t))
    parts = breakdown.step_parts(marks, 0.0, t + 1.0)
    assert parts["setup"] == 1.0
    assert parts["target encoder forward"] == 2.0  # 1 s in each micro-batch
    assert parts["predictor backward"] == 2.0
    # from context grad> to the next micro-batch's model>, then to the clip
    assert parts["context encoder backward"] == 2.0
    assert parts["loss forward"] == 2 * (9.0 - 4.0)  # model> … model< less the four spans
    assert parts["loss and regularizer backward"] == 4.0
    assert parts["gradient clip"] == 1.0 and parts["optimizer"] == 2.0
    assert parts["EMA update"] == 1.0 and parts["other"] == 4.0  # the gaps between them
    assert sum(parts.values()) == t + 1.0


def test_step_timer_removes_every_hook_and_wrapper(tinytales_bins):
    config = runs.load_config(None, tiny(tinytales_bins))
    config = replace(config, model=resolve_model(config, torch.device("cpu"), 200))
    training_step = TrainingStep(config, torch.device("cpu"))
    clip = torch.nn.utils.clip_grad_norm_
    timer = breakdown.StepTimer(training_step)
    assert "step" in vars(training_step.optimizer) and torch.nn.utils.clip_grad_norm_ is not clip
    timer.remove()
    model = training_step.model
    assert "step" not in vars(training_step.optimizer) and "update_target" not in vars(model)
    assert torch.nn.utils.clip_grad_norm_ is clip
    for module in (model, model.target_encoder, model.context_encoder, model.predictor):
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not module._backward_pre_hooks


def test_breakdown_refuses_a_shared_encoder_it_cannot_time_apart(tinytales_bins):
    with pytest.raises(ValueError, match="EMA target encoder"):
        breakdown.breakdown(None, steps=1, warmup=0, progress=False,
                            overrides=tiny(tinytales_bins, 'objective.anti_collapse="sigreg"'))
