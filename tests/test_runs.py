"""Run folders: configs that name the bad key, checkpoints that refuse to be misread, and a
run read back from its folder alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny
from tjepa import runs, train
from tjepa.config import ConfigError
from tjepa.lab.sweep import saved_variants

ROOT = Path(__file__).resolve().parents[1]
LEVERS = ROOT / "docs/runs/levers"  # the real-text runs' records that the docs' tables read
TINYTALES = ROOT / "docs/runs/tinytales"  # the tinytales runs' records
PAIRS = ROOT / "docs/runs/pairs"  # the real-text runs scored on minimal pairs
KEPT = "train.keep_steps=[150, 300, 600]"  # the pairs runs kept these checkpoints besides


@pytest.mark.parametrize(("override", "message"), [
    ("model.width=3", "model: unknown key 'width'"),
    ("model.dim=\"big\"", "model.dim: expected an integer"),
    ("optim.lr=-1.0", "optim: lr must be > 0"),
    ("nonsense.key=1", "unknown key 'nonsense'"),
])
def test_bad_configs_name_the_key_and_the_file(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        runs.load_config(None, [override])
    assert "default.toml" in str(info.value)


def test_truncated_or_foreign_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(runs.RunError, match="not a tjepa checkpoint"):
        runs.load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "foreign.pt").read_bytes()[:100])
    with pytest.raises(runs.RunError, match="truncated or not a checkpoint"):
        runs.load_checkpoint(tmp_path / "cut.pt")


def test_load_run_rebuilds_the_runs_anti_collapse_mechanism(tinytales_bins, tmp_path):
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=2",
                                          'objective.anti_collapse="sigreg"'))
    train.train(config, tmp_path / "run", progress=False)
    model, loaded, _ = runs.load_run(tmp_path / "run")
    assert loaded.objective.anti_collapse == "sigreg"
    assert model.target_encoder is model.context_encoder  # no EMA copy: it makes its own targets


def test_embed_handles_unseen_tokens_and_returns_one_row_per_text(tiny_run):
    vectors = runs.embed_texts(tiny_run, ["Lily found a red ball.", "Quantum zebra xylophone!"])
    assert vectors.shape == (2, 32) and np.isfinite(vectors).all()


def test_the_objective_has_a_section_of_its_own():
    config = runs.load_config(None, ['objective.anti_collapse="sigreg"'])
    assert config.objective.name == "jepa" and config.objective.anti_collapse == "sigreg"
    with pytest.raises(ConfigError, match="optim: unknown key 'nonsense'"):
        runs.load_config(None, ["optim.nonsense=1"])


def test_a_run_folder_with_the_objective_under_optim_is_read_with_a_warning(tmp_path):
    old = tmp_path / "config.toml"
    old.write_text('[optim]\nlr = 0.001\nanti_collapse = "sigreg"\nsigreg_weight = 0.1\n')
    with pytest.warns(UserWarning, match=r"belong to \[objective\]"):
        config = runs.load_config(old)
    assert (config.objective.anti_collapse, config.objective.sigreg_weight) == ("sigreg", 0.1)
    assert config.optim.lr == 0.001


def test_an_objective_key_set_under_optim_is_an_error_that_names_its_section():
    with pytest.raises(ConfigError, match=r"--set objective.anti_collapse=\.\.\."):
        runs.load_config(None, ['optim.anti_collapse="ema"'])


def recorded_config(config_file: str | Path, overrides: list[str], saved: runs.RunConfig):
    """A config file with overrides, resolved as the recorded run ``saved`` was: its bins
    folder and their vocabulary."""
    config = runs.load_config(ROOT / config_file, overrides)
    return replace(config, data=replace(config.data, dir=saved.data.dir),
                   model=replace(config.model, vocab_size=saved.model.vocab_size))


def test_every_recorded_run_trained_its_sweeps_config_with_its_overrides():
    # the docs' commands name these config files: a change to one that the runs kept in
    # docs/runs did not train must fail here
    for records, config_file in ((LEVERS, "configs/tinystories_cpu.toml"),
                                 (TINYTALES, "configs/default.toml"),
                                 (PAIRS, "configs/tinystories_cpu.toml")):
        recorded = saved_variants(records)
        assert recorded and {v["config"] for v in recorded} == {config_file}
        for variant in recorded:
            for seed in variant["seeds"]:
                saved = runs.load_config(records / f"{variant['name']}-seed{seed}/config.toml")
                overrides = [*variant["overrides"], f"train.seed={seed}"]
                assert recorded_config(variant["config"], overrides, saved) == saved, variant


@pytest.mark.parametrize(("records", "variant", "config_file", "overrides"), [
    (LEVERS, "jepa", "configs/tinystories_cpu.toml", []),
    (LEVERS, "ibot-embed", "configs/recipes/ibot_embedding.toml", []),
    (LEVERS, "mlm", "configs/recipes/masked_lm.toml", []),
    (TINYTALES, "default", "configs/default.toml", []),
    (TINYTALES, "mlm", "configs/recipes/masked_lm_tinytales.toml", []),
    (PAIRS, "jepa", "configs/tinystories_cpu.toml", [KEPT]),
    (PAIRS, "ibot-embed", "configs/recipes/ibot_embedding.toml", [KEPT]),
    (PAIRS, "mlm", "configs/recipes/masked_lm.toml", [KEPT]),
])
def test_each_reported_config_is_the_one_its_recorded_runs_trained(records, variant,
                                                                   config_file, overrides):
    # docs/results.md reports these config files by these runs, three seeds each
    seeds = next(v["seeds"] for v in saved_variants(records) if v["name"] == variant)
    assert len(seeds) >= 3
    for seed in seeds:
        saved = runs.load_config(records / f"{variant}-seed{seed}/config.toml")
        wanted = recorded_config(config_file, [*overrides, f"train.seed={seed}"], saved)
        assert wanted == saved


def test_a_recipe_names_only_what_it_changes_over_its_base(tmp_path):
    (tmp_path / "base.toml").write_text("[model]\ndim = 64\ndepth = 3\n")
    (tmp_path / "recipe.toml").write_text('base = "base.toml"\n[model]\ndepth = 2\n')
    config = runs.load_config(tmp_path / "recipe.toml")
    assert (config.model.dim, config.model.depth) == (64, 2)
    (tmp_path / "loop.toml").write_text('base = "loop.toml"\n')
    with pytest.raises(ConfigError, match="leads back"):
        runs.load_config(tmp_path / "loop.toml")
