"""LiDAR of a trained run: written beside its report, and read into the label-free table."""

from __future__ import annotations

import json
import shutil

import pytest

from tjepa import runs
from tjepa.lab import lidar, sweep


def test_lidar_of_a_run_is_written_beside_it_and_the_same_when_measured_again(tiny_run,
                                                                             tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert lidar.main([str(run), "--documents", "24", "--views", "4"]) == 0
    first = json.loads((run / "lidar.json").read_text())
    assert first["documents"] == 24 and first["views"] == 4 and first["step"] == 8
    width = runs.load_config(run / "config.toml").model.dim  # each encoder within its width
    assert first["max_lidar"] == min(23, width)
    for name in ("context", "target"):  # each within what 24 documents can show, above 1
        assert 1 <= first[f"{name}_lidar"] <= first["max_lidar"]
        assert 1 <= first[f"{name}_lidar_chance"] <= first["max_lidar"]
    again = lidar.run_lidar(run, documents=24, views=4, progress=False)
    assert again == first  # the masks come from a fixed seed


def test_lidar_needs_two_documents_and_two_views(tiny_run):
    with pytest.raises(SystemExit):
        lidar.main([str(tiny_run), "--views", "1"])


def _saved_run(folder, gain: float, context_lidar: float | None, lidar_step: int = 10) -> None:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({
        "objective": "jepa", "step": 10, "probes": [
            {"name": "p", "kind": "sentences", "trained": 0.5 + gain, "random_init": 0.5,
             "best_baseline": 0.5, "baselines": {"length": 0.4}}]}))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "elapsed_s": 1.0,
                                                      "rankme": 50.0}) + "\n")
    if context_lidar is not None:
        (folder / "lidar.json").write_text(json.dumps({
            "step": lidar_step, "context_lidar": context_lidar, "target_lidar": -context_lidar}))


def test_the_label_free_table_ranks_lidar_measured_at_the_reports_step(tmp_path):
    gains = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5}
    for name, gain in gains.items():  # d has no lidar.json, e's is of another checkpoint
        _saved_run(tmp_path / f"{name}-seed0", gain, None if name == "d" else
                   -1.0 if name == "e" else 10 * gain, lidar_step=5 if name == "e" else 10)
    (tmp_path / "sweep.json").write_text(json.dumps({"variants": [
        {"name": name, "config": "c.toml", "overrides": [], "seeds": [0]} for name in gains]}))
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in sweep.label_free_table(tmp_path).splitlines()}
    context = rows["LiDAR (context encoder, over masks)"]
    assert context[1] == "+1.00" and context[-1].strip(" |") == "3"
    assert rows["LiDAR (target encoder, over masks)"][1] == "-1.00"
    assert rows["token RankMe (target encoder)"][-1].strip(" |") == "5"
