"""Optimization: AdamW, and the schedules of the learning rate, weight decay and EMA momentum.

The schedules follow I-JEPA: linear warm-up then cosine decay of the learning rate, weight
decay rising along a cosine, and the target encoder's EMA momentum rising linearly to its final
value over the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tjepa.config import check

if TYPE_CHECKING:
    from tjepa.jepa import JEPA


@dataclass
class OptimConfig:
    """AdamW with warmup-cosine learning rate, cosine weight decay and an EMA momentum ramp."""

    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.04  # I-JEPA: 0.04 → 0.4, cosine
    final_weight_decay: float = 0.4
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: off
    ema_momentum: float = 0.996  # I-JEPA: 0.996 → 1.0, linear
    final_ema_momentum: float = 1.0

    def __post_init__(self) -> None:
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        for name in ("ema_momentum", "final_ema_momentum"):
            check(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1]")


def make_optimizer(model: JEPA, config: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms and the mask token get no decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not name.endswith("mask_token") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay, "decays": True},
              {"params": no_decay, "weight_decay": 0.0, "decays": False}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             fused=fused or None)


@dataclass(frozen=True)
class Schedule:
    """Learning rate, weight decay and EMA momentum at a step, for a run of ``total`` steps."""

    config: OptimConfig
    total: int

    def lr(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, self.total - c.warmup_steps)
        return c.min_lr + (c.lr - c.min_lr) * _cosine(progress)

    def weight_decay(self, step: int) -> float:
        c = self.config
        progress = step / max(1, self.total)
        return c.final_weight_decay + (c.weight_decay - c.final_weight_decay) * _cosine(progress)

    def momentum(self, step: int) -> float:
        c = self.config
        progress = min(1.0, step / max(1, self.total))
        return c.ema_momentum + (c.final_ema_momentum - c.ema_momentum) * progress

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        lr, wd = self.lr(step), self.weight_decay(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group["decays"]:
                group["weight_decay"] = wd


def _cosine(progress: float) -> float:
    """1 → 0 along half a cosine as progress goes 0 → 1."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
