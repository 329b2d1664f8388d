"""Probes on features with a known answer, and the evaluation of a real (tiny) run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_train import tiny
from tjepa import eval as tjepa_eval
from tjepa import probe, train
from tjepa.train import TrainingError


def test_linear_probe_reads_a_linearly_coded_label_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    x = torch.randn(600, 16, generator=g)
    x[:, :4] += 5 * torch.nn.functional.one_hot(y, 4)
    assert probe.linear_probe(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = torch.randn(600, 16, generator=g)
    assert probe.linear_probe(noise[:400], y[:400], noise[400:], y[400:]) < 0.4


def test_linear_probe_cannot_compute_xnor_but_pair_features_can_compare():
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (800, 2), generator=g).float()
    xnor = (bits[:, 0] == bits[:, 1]).long()
    x = bits + 0.05 * torch.randn(800, 2, generator=g)
    assert probe.linear_probe(x[:600], xnor[:600], x[600:], xnor[600:]) < 0.65
    pairs = probe.pair_features(x[:, :1], x[:, 1:])  # [a, b, |a-b|, ab]
    assert probe.linear_probe(pairs[:600], xnor[:600], pairs[600:], xnor[600:]) > 0.95


def test_random_init_scores_fold_into_their_mean_and_spread():
    folded = probe._fold({"trained": 0.9, "random_init/0": 0.4, "random_init/1": 0.6})
    assert folded == pytest.approx({"trained": 0.9, "random_init": 0.5, "random_init_std": 0.1})


def test_nearest_documents_finds_the_closest_rows():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]])
    assert probe.nearest_documents(x, 0, k=1)[0][0] == 1


@pytest.fixture(scope="module")
def tiny_run(tinytales_bins, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    config = train.load_config(None, tiny(tinytales_bins, "train.max_steps=8",
                                          "monitor.interval=4"))
    train.train(config, run, progress=False)
    return run


def test_eval_scores_every_probe_against_random_init(tiny_run):
    report = tjepa_eval.evaluate(tiny_run, max_documents=300, random_inits=2, progress=False)
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


def test_embed_handles_unseen_tokens_and_returns_one_row_per_text(tiny_run):
    vectors = tjepa_eval.embed(tiny_run, ["Lily found a red ball.", "Quantum zebra xylophone!"])
    assert vectors.shape == (2, 32) and np.isfinite(vectors).all()


def test_embed_cli_writes_npy(tiny_run, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("One story.\n<|endoftext|>\nAnother story.\n")
    result = subprocess.run([sys.executable, "-m", "tjepa.embed", str(tiny_run), str(texts)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "texts.npy").shape == (2, 32)


def test_load_run_rebuilds_the_runs_anti_collapse_mechanism(tinytales_bins, tmp_path):
    config = train.load_config(None, tiny(tinytales_bins, "train.max_steps=2",
                                          'optim.anti_collapse="sigreg"'))
    train.train(config, tmp_path / "run", progress=False)
    model, loaded, _ = tjepa_eval.load_run(tmp_path / "run")
    assert loaded.optim.anti_collapse == "sigreg"
    assert model.target_encoder is model.context_encoder  # no EMA copy: it makes its own targets


def test_runs_table_sets_saved_evaluations_side_by_side_and_writes_the_readme(tiny_run,
                                                                              tmp_path):
    tjepa_eval.evaluate(tiny_run, max_documents=200, random_inits=1, progress=False)
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
    with pytest.raises(TrainingError, match="another suite"):
        tjepa_eval.runs_table([tiny_run, twin])
