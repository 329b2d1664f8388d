"""Variants of the taught JEPA, and the one place that turns ``[objective]`` into a model.

The walkthrough teaches one JEPA (``tjepa.jepa``: a predictor regresses the EMA target
encoder's last layer, layer-normed, by smooth L1) and one baseline (``tjepa.mlm``: the masked
LM). The variants below are what the recipe experiments measured against them on real text
(docs/lab/); each plugs into the same training step, monitor and probes through the model
interface ``tjepa.model.Learner``:

- ``student = "encoder"`` (``student``): data2vec's and iBOT's student: the encoder reads
  ``[MASK]`` at the targets and a head predicts; no predictor;
- ``loss = "distill"`` (``distill``): DINO's and iBOT's cross-entropy over learned
  prototypes;
- ``target = "blocks"`` (``targets``): data2vec's average of the top blocks' feed-forward
  outputs (``target_blocks``, ``target_block_norm``);
- ``target = "embedding"`` (``targets``): the hidden word's input embedding, no context;
- ``share_embeddings = true`` (``jepa``): one token table for both encoders;
- ``name = "mlm+jepa"`` (``mlm_jepa``): the masked LM's loss plus ``jepa_weight`` × the
  JEPA's.

``configs/recipes/`` holds the recipes a finding rests on (the iBOT recipe with the embedding
target: ``configs/recipes/ibot_embedding.toml``). ``check`` refuses combinations that cannot
hold, naming the keys; ``build_model`` builds what the keys ask for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tjepa.config import ConfigError
from tjepa.config import check as require
from tjepa.jepa import JEPA
from tjepa.mlm import MaskedLM
from tjepa.model import Learner
from tjepa.variants.jepa import VariantJEPA
from tjepa.variants.mlm_jepa import MaskedLMJEPA
from tjepa.variants.student import EncoderStudentJEPA

if TYPE_CHECKING:
    from tjepa.objective import ObjectiveConfig
    from tjepa.runs import RunConfig


def is_taught(objective: ObjectiveConfig) -> bool:
    """Whether the objective is the JEPA the walkthrough teaches (any anti-collapse)."""
    return (objective.name == "jepa" and objective.student == "predictor"
            and objective.loss == "smooth_l1" and objective.target == "last"
            and not objective.share_embeddings)


def build_model(config: RunConfig) -> Learner:
    """The run's model: the taught JEPA, the masked-LM baseline (``objective.name = "mlm"``)
    or the variant the objective's keys name. ``config.model.vocab_size`` must be resolved."""
    objective = config.objective
    if objective.name == "mlm":
        return MaskedLM(config.model, objective)
    if objective.name == "mlm+jepa":
        return MaskedLMJEPA(config.model, objective)
    if objective.student == "encoder":
        return EncoderStudentJEPA(config.model, objective)
    if is_taught(objective):
        return JEPA(config.model, objective)
    return VariantJEPA(config.model, objective)


def check(config: RunConfig) -> None:
    """Refuse variant keys that cannot hold together (a ``ConfigError`` naming them)."""
    o, pack_length = config.objective, config.train.pack_length
    require(o.student == "predictor" or o.name == "jepa",
            f"objective.student = {o.student!r} is a JEPA's: objective.name must be 'jepa', "
            f"got {o.name!r}")
    require(o.student == "predictor" or pack_length == 0,
            f"objective.student = {o.student!r} takes padded batches: set train.pack_length "
            f"= 0 (it is {pack_length})")
    require(o.temperature > 0, f"objective.temperature must be > 0, got {o.temperature}")
    require(o.jepa_weight >= 0, f"objective.jepa_weight must be >= 0, got {o.jepa_weight}")
    if o.loss == "distill":
        require(o.uses_ema, "objective.loss = 'distill' needs a teacher: anti_collapse ema or "
                f"vicreg, got {o.anti_collapse!r}")
        require(o.name == "jepa", "objective.loss = 'distill' is a JEPA's: objective.name "
                f"must be 'jepa', got {o.name!r}")
        require(o.prototypes >= 2, f"objective.prototypes must be >= 2, got {o.prototypes}")
        require(o.teacher_temperature > 0, "objective.teacher_temperature must be > 0, got "
                f"{o.teacher_temperature}")
        require(0 <= o.centre_momentum < 1,
                f"objective.centre_momentum must be in [0, 1), got {o.centre_momentum}")
    require(0 <= o.target_blocks <= config.model.depth,
            f"objective.target_blocks ({o.target_blocks}) must be between 0 and model.depth "
            f"({config.model.depth})")
    require(not o.share_embeddings or o.uses_ema,
            "objective.share_embeddings needs a target encoder of its own (anti_collapse ema "
            f"or vicreg); under {o.anti_collapse!r} the context encoder makes the targets")


# Objective keys and losses tjepa no longer has (each key with the value that meant "off"):
# recipe screens that no finding rests on, run at this commit.
RETIRED_OBJECTIVE_KEYS = {"span_targets": "off", "target_centering": "off",
                          "document_weight": 0.0}
RETIRED_LOSSES = ("l2", "cosine", "infonce")
RETIRED_AT = "0f40f1f"


def without_retired_keys(table: dict, path: Path) -> dict:
    """A config's TOML ``table`` without the retired keys: run folders written while they
    existed record them at their "off" values, which is the run they are; a retired key that
    was on is refused, naming the commit that can run it."""
    objective = table.get("objective")
    if not isinstance(objective, dict):
        return table
    for key, off in RETIRED_OBJECTIVE_KEYS.items():
        if key in objective and objective[key] != off:
            raise ConfigError(f"{path}: objective.{key} = {objective[key]!r} was retired; "
                              f"tjepa at commit {RETIRED_AT} runs it")
        objective.pop(key, None)
    if objective.get("loss") in RETIRED_LOSSES:
        raise ConfigError(f"{path}: objective.loss = {objective['loss']!r} was retired; tjepa "
                          f"at commit {RETIRED_AT} runs it")
    return table
