"""The schedules: warm-up then cosine learning rate, rising weight decay, the EMA ramp."""

from __future__ import annotations

import pytest

from tjepa.jepa import JEPA
from tjepa.model import ModelConfig
from tjepa.optim import OptimConfig, Schedule, make_optimizer


def test_learning_rate_warms_up_linearly_then_decays_along_a_cosine_to_its_floor():
    schedule = Schedule(OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10), total=110)
    assert schedule.lr(0) == pytest.approx(1e-4) and schedule.lr(9) == pytest.approx(1e-3)
    assert schedule.lr(60) == pytest.approx((1e-3 + 1e-5) / 2)  # half way down the cosine
    assert schedule.lr(110) == pytest.approx(1e-5) and schedule.lr(500) == pytest.approx(1e-5)


def test_weight_decay_and_ema_momentum_rise_from_their_start_to_their_final_value():
    config = OptimConfig(weight_decay=0.04, final_weight_decay=0.4, ema_momentum=0.996,
                         final_ema_momentum=1.0)
    schedule = Schedule(config, total=100)
    assert schedule.weight_decay(0) == pytest.approx(0.04)
    assert schedule.weight_decay(100) == pytest.approx(0.4)
    assert schedule.momentum(50) == pytest.approx(0.998) and schedule.momentum(200) == 1.0


def test_only_matrices_decay_and_the_schedule_sets_both_groups():
    model = JEPA(ModelConfig(vocab_size=20, dim=16, depth=1, heads=2, predictor_dim=8,
                             predictor_depth=1, predictor_heads=2))
    optimizer = make_optimizer(model, OptimConfig())
    decay, no_decay = optimizer.param_groups
    assert all(p.dim() >= 2 for p in decay["params"])
    assert any(p is model.predictor.mask_token for p in no_decay["params"])
    trainable = sum(p.requires_grad for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == trainable
    Schedule(OptimConfig(), total=10).apply(optimizer, 5)
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
