"""The evaluation of a real (tiny) run: every probe against random init, the CLI, and runs
side by side."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tjepa import eval as tjepa_eval
from tjepa.runs import RunError


def test_eval_scores_every_probe_against_random_init(tiny_run):
    report = tjepa_eval.evaluate_run(tiny_run, max_documents=300, random_inits=2, progress=False)
    names = {p["name"] for p in report["probes"]}
    assert {"factor:hero", "factor:ending", "forecast:ending", "factor:friend", "same_story",
            "token_identity", "decoder_lens"} <= names
    kinds = {p["name"]: p["kind"] for p in report["probes"]}
    assert kinds["forecast:ending"] == kinds["factor:friend"] == kinds["same_story"] == "semantic"
    assert kinds["factor:ending"] == "nonlinear" and kinds["factor:hero"] == "lexical"
    for p in report["probes"]:  # the baseline of a document probe is the mean of two twins
        assert (p["random_init_std"] is not None) == (p["kind"] != "information")
    for p in report["probes"]:
        assert 0 <= p["trained"] <= 1 and 0 <= p["random_init"] <= 1
    hero = next(p for p in report["probes"] if p["name"] == "factor:hero")
    assert hero["bag_of_embeddings"] > 0.9  # a name is a word: a bag of words reads it
    assert report["rankme"] > 0
    assert json.loads((tiny_run / "eval.json").read_text())["probes"] == report["probes"]
    assert (tiny_run / "eval.png").exists()


def test_eval_cli_prints_json_last(tiny_run):
    result = subprocess.run([sys.executable, "-m", "tjepa.eval", str(tiny_run), "--json",
                             "--max-documents", "200", "--random-inits", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"probes", "rankme"} <= set(last)


def test_runs_table_sets_saved_evaluations_side_by_side_and_writes_the_readme(tiny_run,
                                                                              tmp_path):
    tjepa_eval.evaluate_run(tiny_run, max_documents=200, random_inits=1, progress=False)
    twin = tmp_path / "twin"
    shutil.copytree(tiny_run, twin)
    report = json.loads((twin / "eval.json").read_text())
    report["probes"][0]["trained"] = 0.123456
    (twin / "eval.json").write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- runs:start -->\nold\n<!-- runs:end -->\nend\n")
    result = subprocess.run([sys.executable, "-m", "tjepa.eval", str(tiny_run), str(twin),
                             "--saved", "--readme", str(readme)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = tjepa_eval.runs_table([tiny_run, twin])
    assert result.stdout.strip() == table
    text = readme.read_text()
    assert table in text and "old" not in text and text.endswith("end\n")
    assert f"--saved --readme {readme}`" in text  # the command that wrote it
    header, _, *rows = table.splitlines()
    assert header.startswith(f"| probe | {tiny_run.name} | twin |")
    first = report["probes"][0]["name"]
    assert any(row.startswith(f"| {first} (") and "| 0.123 |" in row for row in rows)
    kinds = [row.split("(")[1].split(")")[0] for row in rows if "(" in row.split("|")[1]]
    assert kinds == sorted(kinds, key=tjepa_eval.KIND_ORDER.index)  # semantic first
    assert rows.index("| **semantic gain** | " + " | ".join(
        [f"**{report['semantic_gain']:+.3f}**"] * 2) + " | |") == kinds.count("semantic")
    del report["probes"][0]
    (twin / "eval.json").write_text(json.dumps(report))
    with pytest.raises(RunError, match="another suite"):
        tjepa_eval.runs_table([tiny_run, twin])
