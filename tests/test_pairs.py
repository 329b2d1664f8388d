"""Minimal pairs: a score that prefers the sentence it should, ties at one half, files read
strictly, the project's own pairs, and the command on a JEPA, a masked LM and a 1-step run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from tests.helpers import SMALL_MODEL, tiny
from tjepa import data, minimal_pairs, pairs, runs, train
from tjepa.jepa import JEPA
from tjepa.mlm import MaskedLM
from tjepa.objective import ObjectiveConfig

ENGLISH = (  # a few sentences of the project's own, one or more for every paradigm
    "She is happy in the garden. They were tired after the long walk. This dog ran to the "
    "park and then came home. These apples were red and sweet. He saw an owl on a branch. "
    "The children went to see him. She found a ball under the table. He gave the toy to "
    "them. Tom took an apple from the big bowl. The cat sat on the warm mat."
)


def test_a_model_whose_loss_is_higher_at_one_token_prefers_the_sentence_without_it():
    bad_token = 7

    def losses_at(batch):  # a loss of 1 wherever the hidden token is the bad one
        hidden = batch.tokens[batch.document, batch.target_positions[:, 0]]
        return (hidden == bad_token).float()[:, None]

    good, bad = [np.array([3, 4, 5, 6]), np.array([3, 4])], [np.array([3, 7, 5, 6]),
                                                            np.array([7, 4])]
    scores = pairs.sentence_scores(losses_at, good + bad)[:, 0]
    assert scores.tolist() == [0, 0, 1, 1]
    assert pairs.accuracy(scores[:2], scores[2:]).tolist() == [1.0, 1.0]


def test_each_sentence_is_scored_with_each_of_its_tokens_hidden_once_whatever_the_batching(
        monkeypatch):
    seen = Counter()

    def losses_at(batch):
        hidden = batch.tokens[batch.document, batch.target_positions[:, 0]]
        context = batch.context_valid.sum(1)
        assert torch.equal(context, batch.lengths[batch.document] - 1)  # the rest is context
        seen.update(hidden.tolist())
        return hidden.float()[:, None]

    monkeypatch.setattr(pairs, "VIEWS_PER_BATCH", 5)  # several passes, lengths mixed
    sequences = [np.arange(1, n + 1) * 10 + i for i, n in enumerate((4, 2, 6, 3))]
    scores = pairs.sentence_scores(losses_at, sequences)[:, 0]
    assert scores.tolist() == [float(s.sum()) for s in sequences]
    assert seen == Counter(t for s in sequences for t in s.tolist())


@pytest.mark.parametrize("objective", ["jepa", "mlm"])
def test_a_sentence_scores_the_sum_of_its_tokens_losses_alone_or_batched_with_others(objective):
    torch.manual_seed(0)
    model = (JEPA if objective == "jepa" else MaskedLM)(
        SMALL_MODEL, ObjectiveConfig(name=objective)).eval()
    sequences = [np.array([3, 4, 5, 6, 7]), np.array([8, 9, 10]), np.array([11, 12])]
    alone = [pairs.token_scores(model, s) for s in sequences]
    batched = pairs.sentence_scores(pairs.view_losses(model), sequences)[:, 0]
    assert [len(a) for a in alone] == [5, 3, 2]
    np.testing.assert_allclose([a.sum() for a in alone], batched, rtol=1e-5)


def test_ties_count_one_half():
    good, bad = np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 1.0, 4.0, 5.0 + 1e-12])
    assert pairs.accuracy(good, bad).tolist() == [0.5, 0.0, 1.0, 0.5]
    by_paradigm = pairs.by_paradigm(np.array([1.0, 0.0, 0.5, 1.0]), ["a", "a", "b", "b"])
    assert by_paradigm == {"a": 0.5, "b": 0.75} and pairs.overall(by_paradigm) == 0.625


@pytest.mark.parametrize(("line", "says"), [
    ("{not json", "line 3: not JSON"),
    ('{"sentence_good": "A cat sat."}', "line 3: no sentence_bad"),
    ('{"sentence_good": "A cat sat.", "sentence_bad": "  "}', "line 3: sentence_bad is empty"),
    ('["A cat sat.", "Cat a sat."]', "line 3: expected an object"),
])
def test_a_malformed_line_stops_with_one_message_naming_the_file_and_line(tmp_path, line, says):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"sentence_good": "The dog is here.", "sentence_bad": "The dog are here.",
                       "UID": "agreement"})
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(pairs.PairsError, match=f"{path}, {says}"):
        pairs.read_pairs(path)
    path.write_text(f"{good}\n")
    (pair,) = pairs.read_pairs(path)
    assert (pair.paradigm, pair.bad) == ("agreement", "The dog are here.")


def test_the_bigram_model_prefers_the_order_its_text_holds():
    split = data.DocumentSplit(np.array([1, 2, 3, 1, 2, 3, 2, 1], dtype=np.uint16),
                               np.array([0, 3, 6, 8]))
    ngrams = pairs.NGrams(split, vocab_size=4)
    seen, swapped = np.array([1, 2, 3]), np.array([2, 1, 3])
    assert ngrams.bigram_score(seen) < ngrams.bigram_score(swapped)
    assert ngrams.unigram_score(seen) == pytest.approx(ngrams.unigram_score(swapped))


def test_the_builder_writes_every_paradigm_and_says_what_the_ngrams_can_read(tmp_path):
    records = minimal_pairs.build_pairs([ENGLISH], per_paradigm=5)
    made = {r["UID"] for r in records}
    assert made == set(minimal_pairs.PARADIGMS) and len(made) >= 6
    for r in records:
        assert r["sentence_good"] != r["sentence_bad"] and r["field"] == "tjepa"
        assert r["ngrams"]["unigram"] == ("tie" if r["UID"] == "word_swap" else "can")
    assert {(r["sentence_good"], r["sentence_bad"]) for r in records} >= {
        ("She is happy in the garden.", "She are happy in the garden."),
        ("He saw an owl on a branch.", "He saw a owl on a branch."),
    }


def test_no_edit_fills_a_paradigm_and_one_of_a_number_is_not_the_pronoun():
    texts = [f"One day, the dog {i} ran home. No one saw him." for i in range(40)]
    records = minimal_pairs.build_pairs(texts, per_paradigm=100)
    number = [r for r in records if r["UID"] == "determiner_number"]
    assert len(number) == minimal_pairs.MAX_SAME_EDIT
    assert all(r["sentence_bad"].startswith("Two day,") for r in number)


def test_a_bag_of_words_scores_each_swapped_word_pair_exactly_as_its_twin(tinytales_bins):
    records = minimal_pairs.build_pairs(minimal_pairs.read_texts("tinytales"), 100)
    swaps = [r for r in records if r["UID"] == "word_swap"]
    assert len(swaps) == 100
    vocab = data.TokenBins(tinytales_bins).vocab
    ngrams = pairs.NGrams(data.TokenBins(tinytales_bins).split("train"), vocab.size)
    for r in swaps:
        good, bad = (vocab.encode(r[k]) for k in ("sentence_good", "sentence_bad"))
        assert Counter(good.tolist()) == Counter(bad.tolist())  # the same bag of tokens
        assert pairs.accuracy(np.array([ngrams.unigram_score(good)]),
                              np.array([ngrams.unigram_score(bad)])).tolist() == [0.5]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "tinytales.jsonl"
    assert minimal_pairs.main(["--source", "tinytales", "--out", str(path),
                               "--per-paradigm", "20"]) == 0
    return path


@pytest.mark.parametrize("objective", ["jepa", "mlm"])
def test_the_command_scores_a_run_its_twin_and_the_ngrams_and_prints_json_last(
        tinytales_bins, tmp_path, pairs_file, objective):
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=1",
                                         f'objective.name="{objective}"'))
    train.train(config, tmp_path / "run", progress=False)  # a 1-step run
    result = subprocess.run([sys.executable, "-m", "tjepa.pairs", str(tmp_path / "run"),
                             "--pairs", str(pairs_file), "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"overall", "readout_overall", "paradigms", "baselines",
            "unseen_token_share"} <= set(report)
    assert set(report["baselines"]) == {"random_init", "length", "unigram", "bigram"}
    assert report["score"] == ("energy" if objective == "jepa" else "pseudo-likelihood")
    assert report["overall"] == pytest.approx(np.mean(list(report["paradigms"].values())),
                                              abs=1e-4)
    assert all(0 <= v <= 1 for v in report["paradigms"].values())
    assert report["paradigms"].keys() == report["readout_paradigms"].keys()
    assert "| **overall** (mean over paradigms) |" in result.stdout
    saved = json.loads((tmp_path / "run" / "pairs-tinytales.json").read_text())
    assert saved == report
    table = subprocess.run([sys.executable, "-m", "tjepa.pairs", str(tmp_path / "run"),
                            "--pairs", str(pairs_file), "--saved"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "| **overall** |" in table.stdout


def test_the_command_refuses_a_malformed_file_in_one_line(tiny_run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence_good": "A cat sat."}\n')
    result = subprocess.run([sys.executable, "-m", "tjepa.pairs", str(tiny_run), "--pairs",
                             str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"tjepa.pairs: error: {bad}, line 1: no sentence_bad"


def test_a_sweep_folder_stands_for_its_runs_variant_by_variant_seed_by_seed(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"variants": [
        {"name": "jepa", "seeds": [0, 1]}, {"name": "mlm", "seeds": [0]}]}))
    alone = tmp_path / "alone"
    assert pairs.run_folders([sweep, alone]) == [
        sweep / "jepa-seed0", sweep / "jepa-seed1", sweep / "mlm-seed0", alone]
