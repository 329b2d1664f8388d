"""The evaluation of a real (tiny) run: every probe against random init, the CLI, and runs
side by side."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny
from tjepa import data, probe, runs, train
from tjepa import eval as tjepa_eval
from tjepa.runs import RunError


def test_eval_scores_every_probe_against_random_init_and_the_shortcuts(tiny_run):
    report = tjepa_eval.evaluate_run(tiny_run, max_documents=300, random_inits=2, progress=False)
    names = {p["name"] for p in report["probes"]}
    assert {"factor:hero", "factor:ending", "forecast:ending", "factor:friend", "same_story",
            "order:halves", "order:words", "token_identity", "decoder_lens"} <= names
    kinds = {p["name"]: p["kind"] for p in report["probes"]}
    assert {kinds[n] for n in ("factor:friend", "same_story", "order:halves",
                               "order:words")} == {"story"}
    assert {k for n, k in kinds.items() if n.startswith("discourse:")} == {"sentences"}
    assert kinds["forecast:ending"] == "pretext"  # the S denoiser's own task: not the headline
    assert kinds["factor:ending"] == "nonlinear" and kinds["factor:hero"] == "lexical"
    for p in report["probes"]:
        assert {"name", "kind", "trained", "random_init", "best_baseline"} <= set(p)
        assert p["best_baseline"] == max([p["random_init"], *p["baselines"].values()])
        assert 0 <= p["trained"] <= 1 and 0 <= p["random_init"] <= 1
        # the baseline of a document probe is the mean of two twins, with its spread
        assert (p["random_init_std"] is not None) == (p["kind"] != "information")
        shortcuts = p["kind"] in ("story", "sentences", "lexical", "nonlinear")
        assert set(p["baselines"]) == (set(probe.SHORTCUTS) if shortcuts else set())
    hero = next(p for p in report["probes"] if p["name"] == "factor:hero")
    # a name is a word: a bag of words reads it
    assert max(hero["baselines"]["bag_of_words"], hero["baselines"]["bag_of_embeddings"]) > 0.9
    # the headline: what training added to random init, where no shortcut reads 0.9
    headline = [p for p in report["probes"] if p["kind"] in probe.HEADLINE_KINDS
                and max(p["baselines"].values()) < probe.SHORTCUT_LINE]
    assert report["headline_probes"] == [p["name"] for p in headline]
    assert "factor:ending" in report["headline_probes"]  # no shortcut reads an XNOR
    assert "factor:hero" not in report["headline_probes"]  # a word names it
    added = [p["trained"] - p["random_init"] for p in headline]
    assert report["training_gain"] == pytest.approx(sum(added) / len(added), abs=1e-4)
    assert report["passed"] == [p["name"] for p in report["probes"] if p["baselines"]
                                and p["trained"] - p["best_baseline"] >= probe.NOISE]
    assert (Path(report["checkpoint"]).name, report["step"]) == ("last.pt", 8)
    assert report["rankme"] > 0
    assert 0 < report["target_token_share"] <= 1
    assert json.loads((tiny_run / "eval.json").read_text())["probes"] == report["probes"]
    assert (tiny_run / "eval.png").exists()


def test_eval_reads_the_checkpoint_it_is_told_to(tiny_run):
    best = tjepa_eval.evaluate_run(tiny_run, max_documents=100, random_inits=1,
                                   progress=False, checkpoint="best")
    assert Path(best["checkpoint"]).name == "best.pt" and best["step"] in (5, 8)
    with pytest.raises(RunError, match="no checkpoint there"):
        tjepa_eval.evaluate_run(tiny_run, checkpoint=tiny_run / "missing.pt", progress=False)


def test_document_probes_alone_score_the_headline_as_the_full_suite_does(tiny_run):
    kwargs = dict(max_documents=100, random_inits=1, progress=False)
    full = tjepa_eval.evaluate_run(tiny_run, **kwargs)
    documents = tjepa_eval.evaluate_run(tiny_run, token_probes=False, **kwargs)
    kinds = {p["kind"] for p in documents["probes"]}
    assert "information" in {p["kind"] for p in full["probes"]} and "information" not in kinds
    story = lambda report: [p for p in report["probes"] if p["kind"] == "story"]
    assert story(documents) == story(full)
    assert documents["training_gain"] == full["training_gain"]


def test_a_second_eval_reads_the_baselines_from_the_cache_and_scores_what_a_fresh_one_does(
        tiny_run, tinytales_bins, tmp_path, monkeypatch):
    bins = tmp_path / "bins"
    shutil.copytree(tinytales_bins, bins, ignore=shutil.ignore_patterns("probe-cache"))
    calls = []
    features_of = probe.features_of
    monkeypatch.setattr(probe, "features_of", lambda *a, **k: calls.append(1) or features_of(
        *a, **k))
    kwargs = dict(data_dir=bins, max_documents=100, random_inits=2, progress=False)
    fresh = tjepa_eval.evaluate_run(tiny_run, cache=False, **kwargs)
    uncached_calls = len(calls)
    first = tjepa_eval.evaluate_run(tiny_run, **kwargs)
    assert len(calls) == 2 * uncached_calls and list((bins / "probe-cache").glob("*.json"))
    calls.clear()
    second = tjepa_eval.evaluate_run(tiny_run, **kwargs)
    assert fresh["probes"] == first["probes"] == second["probes"]
    # the twins and the text-only shortcuts of the discourse and order probes come from the
    # cache: per split, the trained encoder and bag_of_embeddings are all that is computed
    assert len(calls) < uncached_calls / 2
    # other probe settings are other texts: a cache of their own, nothing read from the first
    tjepa_eval.evaluate_run(tiny_run, **(kwargs | {"max_documents": 99}))
    assert len(list((bins / "probe-cache").glob("*.json"))) == 2


def test_rescored_shortcuts_are_those_a_fresh_eval_scores_and_leave_the_encoders_alone(
        tiny_run, tmp_path):
    kwargs = dict(max_documents=100, random_inits=1, progress=False, token_probes=False)
    fresh = tjepa_eval.evaluate_run(tiny_run, **kwargs)
    saved = tmp_path / "saved"
    shutil.copytree(tiny_run, saved, ignore=shutil.ignore_patterns("*.pt"))  # no checkpoint
    report = json.loads((saved / "eval.json").read_text())
    for p in report["probes"]:  # an eval.json from before positional_words
        if p["baselines"]:
            del p["baselines"]["positional_words"]
            p["best_baseline"] = max([p["random_init"], *p["baselines"].values()])
    (saved / "eval.json").write_text(json.dumps(report))
    rescored = tjepa_eval.rescore_shortcuts(saved, max_documents=100, progress=False)
    assert rescored["probes"] == fresh["probes"]
    assert (rescored["training_gain"], rescored["passed"]) == (
        fresh["training_gain"], fresh["passed"])
    assert rescored["shortcuts_rescored"] == sorted(probe.TEXT_SHORTCUTS)
    with pytest.raises(RunError, match="--max-documents"):  # other texts than were probed
        tjepa_eval.rescore_shortcuts(saved, max_documents=99, progress=False)


def test_eval_cli_prints_json_last(tiny_run):
    result = subprocess.run([sys.executable, "-m", "tjepa.eval", str(tiny_run), "--json",
                             "--max-documents", "200", "--random-inits", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"probes", "rankme", "training_gain", "headline_probes", "passed",
            "target_token_share", "checkpoint", "step"} <= set(last)
    assert all({"name", "kind", "trained", "random_init", "best_baseline"} <= set(p)
               for p in last["probes"])


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
    assert header.startswith(
        f"| probe: trained (random init / best shortcut) | {tiny_run.name} | twin |")
    first = report["probes"][0]["name"]
    assert any(row.startswith(f"| {first} (") and "| 0.123 (" in row for row in rows)
    labels = [row.split("|")[1].strip().removesuffix(" ✓").rsplit("(", 1)[-1].rstrip(")")
              for row in rows]
    kinds = [label for label in labels if label in tjepa_eval.KIND_ORDER]
    assert kinds == sorted(kinds, key=tjepa_eval.KIND_ORDER.index)  # story first
    headline = [row for row in rows if row.split("|")[1].strip().endswith("✓")]
    assert len(headline) == len(report["headline_probes"])
    gain = f"**{report['training_gain']:+.3f}**"  # the twin's change is in no headline probe
    assert f"| **training gain** (✓ probes: trained − random init) | {gain} | {gain} |" in rows
    assert "| checkpoint (step) | last.pt (8) | last.pt (8) |" in rows
    del report["probes"][0]  # a probe one run lacks (the masked LM has no predictor) is a dash
    (twin / "eval.json").write_text(json.dumps(report))
    assert any(row.startswith(f"| {first} (") and row.endswith(" | — |")
               for row in tjepa_eval.runs_table([tiny_run, twin]).splitlines())


def test_a_masked_lm_run_is_probed_by_the_same_suite_and_tabled_beside_the_jepa(
        tiny_run, tinytales_bins, tmp_path):
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=4",
                                         'objective.name="mlm"'))
    train.train(config, tmp_path / "mlm", progress=False)
    report = tjepa_eval.evaluate_run(tmp_path / "mlm", max_documents=100, random_inits=1,
                                     progress=False)
    names = {p["name"] for p in report["probes"]}
    assert {"same_story", "order:halves", "order:words", "token_identity"} <= names
    assert not names & {"forecast:ending", "decoder_lens"}  # it has no predictor to ask
    tjepa_eval.evaluate_run(tiny_run, max_documents=100, random_inits=1, progress=False)
    table = tjepa_eval.runs_table([tiny_run, tmp_path / "mlm"])
    assert "| objective | jepa | mlm |" in table
    assert any(row.startswith("| decoder_lens (information)") and row.endswith(" | — |")
               for row in table.splitlines())


def test_eval_refuses_bins_made_with_another_vocabulary(tiny_run, tmp_path):
    stories = tmp_path / "stories.txt"
    stories.write_text("\n<|endoftext|>\n".join(["Zorp quibbled with the xylophone."] * 20))
    other = tmp_path / "other"
    data.prepare(str(stories), other)
    with pytest.raises(RunError, match="--vocab-from"):
        tjepa_eval.evaluate_run(tiny_run, data_dir=other, progress=False)
    same = tmp_path / "same"
    data.prepare(str(stories), same, vocab=data.read_run_vocabulary(tiny_run))
    assert data.TokenBins(same).meta["id_map"] == json.loads(
        (tiny_run / "vocab.json").read_text())["id_map"]
