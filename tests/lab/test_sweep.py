"""Recipe sweeps: variants of one config, trained once, probed alike, tabled from their runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import TINY
from tjepa.config import ConfigError
from tjepa.lab import sweep


def test_a_variant_is_a_name_and_its_overrides():
    variant = sweep.Variant.parse("fast: optim.lr=1e-3 ;optim.warmup_steps=5", "c.toml")
    assert variant == sweep.Variant("fast", "c.toml", ["optim.lr=1e-3", "optim.warmup_steps=5"])
    assert sweep.Variant.parse("base", "c.toml").overrides == []


@pytest.mark.parametrize("text", [": optim.lr=1e-3", "a/b: optim.lr=1e-3"])
def test_a_variant_needs_a_name_that_can_name_a_folder(text):
    with pytest.raises(ConfigError, match="give it a name"):
        sweep.Variant.parse(text, "c.toml")


def test_sweep_trains_each_variant_once_and_tables_them_from_their_runs(tinytales_bins,
                                                                        tmp_path):
    variants = [sweep.Variant.parse(v, "configs/default.toml")
                for v in ("base", "fast: optim.lr=1e-3")]
    settings = dict(data_dir=str(tinytales_bins), steps=3, max_documents=100,
                    overrides=[*TINY, "monitor.documents=32"], progress=False)
    rows = sweep.sweep(variants, out=tmp_path, **settings)
    assert [r["variant"] for r in rows] == ["base", "fast"]
    assert rows[1]["overrides"] == ["optim.lr=1e-3"]
    for row in rows:
        assert row["steps"] == 3 and row["seeds"] == [0] and row["seconds_per_step"] > 0
        names = [p["name"] for p in row["probes"]]
        assert "same_story" in names and "token_identity" not in names  # document probes
    config = (tmp_path / "fast-seed0" / "config.toml").read_text()
    assert "lr = 0.001" in config
    # run again: the finished runs are read, not trained again; the table keeps both
    stamp = (tmp_path / "base-seed0" / "last.pt").stat().st_mtime_ns
    again = sweep.sweep(variants[:1], out=tmp_path, **settings)
    assert (tmp_path / "base-seed0" / "last.pt").stat().st_mtime_ns == stamp
    assert [r["variant"] for r in again] == ["base", "fast"]
    assert json.loads((tmp_path / "sweep.json").read_text())["variants"][0]["seeds"] == [0]
    table = sweep.sweep_table(again)
    assert "| base |" in table and "| fast |" in table and "*bag of words* (with base)" in table
    assert "`optim.lr=1e-3`" in table and "s/step" in table
    brief = sweep.sweep_table(again, brief=True)
    assert "| fast | 3 × 1 |" in brief and "overrides" not in brief and "s/step" not in brief
    readme = tmp_path / "page.md"
    readme.write_text("a\n<!-- sweep:start -->\nold\n<!-- sweep:end -->\nb\n")
    assert sweep.main(["--out", str(tmp_path), "--saved", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert table in text and "old" not in text and "tjepa.lab.sweep --out" in text
    # --only: the variants named, in that order, the first one's baselines below them
    assert sweep.main(["--out", str(tmp_path), "--saved", "--brief", "--only", "fast",
                       "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| fast |" in text and "| base |" not in text and "(with fast)" in text
    assert sweep.main(["--out", str(tmp_path), "--saved", "--only", "base,slow"]) == 1


def _report(gain: float, probes: list[tuple[str, float]]) -> dict:
    return {"step": 10, "probes": [
        {"name": name, "kind": "story", "trained": trained, "best_baseline": 0.5,
         "random_init": 0.5, "baselines": {"length": 0.4}} for name, trained in probes]}


def test_a_variant_row_matches_probes_by_name_across_seeds():
    # seed 0 was probed with the token probes too: one more probe, listed first
    metrics = [{"step": 10, "loss": 0.3, "val_loss": 0.3, "val_constant_loss": 0.4,
                "rankme": 50.0, "elapsed_s": 5.0}]
    runs = [{"seed": 0, "report": _report(0.2, [("token_identity", 1.0), ("order:halves", 0.9)]),
             "metrics": metrics, "seconds_per_step": 0.5},
            {"seed": 1, "report": _report(0.1, [("order:halves", 0.7)]),
             "metrics": metrics, "seconds_per_step": 0.5}]
    row = sweep.variant_row("v", [], runs)
    assert [p["name"] for p in row["probes"]] == ["order:halves"]
    assert row["probes"][0]["trained"] == pytest.approx(0.8)
    assert row["probes"][0]["margins"] == pytest.approx([0.4, 0.2])


def test_spearman_ranks_ties_together_and_skips_missing_values():
    assert sweep.spearman([1, 2, 3, 4], [2, 4, 6, 90]) == pytest.approx(1.0)
    assert sweep.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3)
    assert sweep.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert sweep.spearman([1, float("nan"), 2, 3], [1, 5, 2, 3]) == pytest.approx(1.0)
    assert np.isnan(sweep.spearman([1, 2], [1, 2]))  # too few runs to rank


def test_a_correlation_one_recipe_carries_swings_when_that_recipe_is_left_out():
    # four runs with no order between number and gain, and one far below in both
    number, gain = [5, 6, 7, 8, 0], [0.3, 0.1, 0.4, 0.2, -1.0]
    assert sweep.spearman(number, gain) == pytest.approx(0.5)
    low, high = sweep.spearman_left_out(number, gain)
    assert low == pytest.approx(0.0) and high == pytest.approx(0.8)
    assert sweep.spearman_left_out([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx((1.0, 1.0))
    # a recipe's seeds leave together: the two far runs are one variant's
    number, gain = [5, 6, 7, 8, 0, 0.5], [0.3, 0.1, 0.4, 0.2, -1.0, -0.9]
    one_run = sweep.spearman_left_out(number, gain)
    by_variant = sweep.spearman_left_out(number, gain, ["a", "b", "c", "d", "e", "e"])
    assert by_variant[0] == pytest.approx(0.0) and one_run[0] > 0.3
