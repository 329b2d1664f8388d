"""Self-distillation over prototypes: the JEPA's predictions scored by a cross-entropy, not a
regression (``objective.loss = "distill"``; DINO, Caron et al. 2021; iBOT, Zhou et al. 2022).

A regression onto a target embedding gains little when the prediction is uncertain: its best
guess is the mean of the plausible targets, which keeps little of any one of them. DINO and
iBOT score a prediction as a distribution instead. Both the prediction and its target are read
against K learned prototypes (cosine similarities, as DINO's weight-normed last layer gives
them); the teacher's distribution over the prototypes is centred (the running mean of its
logits taken away) and sharpened (a low temperature); the student's is the softmax of its own
logits at a higher temperature; the loss is the cross-entropy of the student's distribution
against the teacher's. Centring keeps one prototype from taking every target; sharpening keeps
the teacher from spreading evenly over all of them: the two together stop the collapse a
cross-entropy between two learned distributions invites.

    student logits (V, P, K) = cos(prediction, prototypes) / temperature
    teacher probs  (V, P, K) = softmax((cos(target, teacher prototypes) − centre) / teacher_t)
    loss           (V, P)    = − Σ_k teacher · log softmax(student logits)

The teacher's prototypes are an EMA of the student's, at the target encoder's momentum (DINO's
teacher head). The centre moves only in training, by ``centre_momentum`` per batch, on this
process's targets (DINO all-reduces it over ranks; here each rank keeps its own).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Prototypes(nn.Module):
    """K prototypes of dimension D for the student, their EMA for the teacher, and the
    teacher's centre."""

    def __init__(self, dim: int, count: int, temperature: float, teacher_temperature: float,
                 centre_momentum: float = 0.9):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(count, dim) / dim**0.5)  # (K, D)
        self.register_buffer("teacher_weight", self.weight.detach().clone())  # (K, D)
        self.register_buffer("centre", torch.zeros(count))  # (K,)
        self.temperature, self.teacher_temperature = temperature, teacher_temperature
        self.centre_momentum = centre_momentum

    def teacher_logits(self, targets: Tensor) -> Tensor:
        """The targets' cosines (..., K) to the teacher's prototypes."""
        return F.normalize(targets.float(), dim=-1) @ F.normalize(self.teacher_weight, dim=-1).T

    def loss(self, predictions: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
        """Per-token cross-entropy (V, P) of the student's distribution against the teacher's,
        for predictions and targets (V, P, D). Given ``valid`` (V, P) (in training), the centre
        then moves towards those targets' mean teacher logits, after they were scored."""
        with torch.no_grad():
            logits = self.teacher_logits(targets)
            teacher = torch.softmax((logits - self.centre) / self.teacher_temperature, dim=-1)
            if valid is not None:
                self.update_centre(logits, valid)
        student = (F.normalize(predictions.float(), dim=-1)
                   @ F.normalize(self.weight, dim=-1).T) / self.temperature
        return -(teacher * F.log_softmax(student, dim=-1)).sum(-1)

    @torch.no_grad()
    def update_centre(self, logits: Tensor, valid: Tensor) -> None:
        """centre ← m · centre + (1 − m) · the mean of the teacher ``logits`` (..., K) where
        ``valid`` (...)."""
        weight = valid.float()[..., None]
        mean = (logits * weight).flatten(0, -2).sum(0) / weight.sum().clamp(min=1)
        self.centre.lerp_(mean, 1.0 - self.centre_momentum)

    @torch.no_grad()
    def update_teacher(self, momentum: float | Tensor) -> None:
        """teacher prototypes ← momentum · teacher + (1 − momentum) · student."""
        self.teacher_weight.lerp_(self.weight, 1.0 - momentum)
