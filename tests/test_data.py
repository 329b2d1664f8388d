"""Text → token bins → batches: round trips, boundaries, atomic writes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tjepa import corpus, data

STORIES = ["Once upon a time, a cat sat.", "The dog ran to the park!", "Lily saw a red ball."]


def write_txt(path, stories):
    path.write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n", encoding="utf-8")
    return path


def test_compact_vocabulary_round_trips_text(tmp_path):
    src = write_txt(tmp_path / "s.txt", STORIES * 4)
    data.prepare(str(src), tmp_path / "bins")
    bins = data.TokenBins(tmp_path / "bins")
    for story in STORIES:
        ids = bins.vocab.encode(story)
        assert data.UNKNOWN_ID not in ids
        assert bins.vocab.decode(ids) == story
    assert bins.meta["dtype"] == "uint16"
    assert bins.vocab_size == len(bins.meta["id_map"]) + 1


def test_unseen_tokens_map_to_the_unknown_id(tmp_path):
    data.prepare(str(write_txt(tmp_path / "s.txt", STORIES * 4)), tmp_path / "bins")
    vocab = data.TokenBins(tmp_path / "bins").vocab
    ids = vocab.encode("Zebra quantum xylophone")
    assert (ids == data.UNKNOWN_ID).any()
    assert ids.max() < vocab.size


def test_document_boundaries_are_kept(tmp_path):
    # Distinct stories over a few words, so that val holds no token unseen in train.
    stories = ["The cat" + " and the dog" * i + " ran." for i in range(30)]
    data.prepare(str(write_txt(tmp_path / "s.txt", stories)), tmp_path / "bins")
    bins = data.TokenBins(tmp_path / "bins")
    seen = []
    for split in ("train", "val"):
        docs = bins.split(split)
        seen += [bins.vocab.decode(docs.document(i)) for i in range(len(docs))]
    assert sorted(seen) == sorted(stories)
    assert bins.meta["documents"]["train"] + bins.meta["documents"]["val"] == 30
    assert min(bins.meta["documents"].values()) >= 1


def test_jsonl_parquet_and_folders_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps({"text": s}) for s in STORIES))
    pq.write_table(pa.table({"text": STORIES}), folder / "b.parquet")
    assert sorted(data.read_text_file(folder / "a.jsonl")) == sorted(STORIES)
    assert data.read_text_file(folder / "b.parquet") == STORIES
    summary = data.prepare(str(folder), tmp_path / "bins")
    assert summary["documents"] == 6


def test_a_folder_with_train_and_valid_files_keeps_its_own_split(tmp_path):
    folder = tmp_path / "ts"
    folder.mkdir()
    write_txt(folder / "TinyStories-train.txt", STORIES)
    write_txt(folder / "TinyStories-valid.txt", STORIES[:1])
    summary = data.prepare(str(folder), tmp_path / "bins")
    assert summary["split_documents"] == {"train": 3, "val": 1}


def test_tinytales_is_deterministic_under_a_seed():
    a, b, c = corpus.generate(50, seed=1), corpus.generate(50, seed=1), corpus.generate(50, seed=2)
    assert a == b
    assert a != c
    assert set(a[0].factors) == set(corpus.FACTORS)


def test_tinytales_names_recur_and_the_ending_follows_choice_and_friend():
    for tale in corpus.generate(300, seed=3):
        f = tale.factors
        assert tale.text.count(f["hero"]) >= 3
        assert tale.text.startswith(tale.prefix) and len(tale.prefix) < len(tale.text)
        assert f["friend"] in tale.prefix and f["friend"] != f["hero"]
        assert f["ending"] == ("happy" if (f["choice"] == "share") == (f["nature"] == "kind")
                               else "sad")
        outcome = tale.text[len(tale.prefix):]
        assert ("happy" in outcome) == (f["ending"] == "happy")


def test_tinytales_contextual_factors_defeat_word_counts():
    # The ending is an XNOR of two prefix sentences: every single word is equally common in
    # happy and sad prefixes, so no linear function of word counts can tell them apart.
    tales = corpus.generate(4000, seed=0)
    for word in ("kind", "greedy", "share", "mine", "keep"):
        happy = [word in t.prefix for t in tales if t.factors["ending"] == "happy"]
        sad = [word in t.prefix for t in tales if t.factors["ending"] == "sad"]
        assert abs(np.mean(happy) - np.mean(sad)) < 0.05, word


def test_tinytales_bins_carry_factors(tinytales_bins):
    bins = data.TokenBins(tinytales_bins)
    factors = bins.factors()
    assert len(factors["train"]["hero"]) == len(bins.split("train"))
    assert len(factors["val"]["ending"]) == len(bins.split("val"))
    assert factors["values"]["ending"] == ["happy", "sad"]
    assert len(factors["prefix_tokens"]["train"]) == len(bins.split("train"))
    lengths = bins.split("train").lengths
    assert (np.asarray(factors["prefix_tokens"]["train"]) < lengths).all()


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    src = write_txt(tmp_path / "s.txt", STORIES * 4)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_replace_dir", boom)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(str(src), tmp_path / "bins")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.txt"]


def test_existing_bins_are_not_overwritten_without_force(tmp_path):
    src = write_txt(tmp_path / "s.txt", STORIES * 4)
    data.prepare(str(src), tmp_path / "bins")
    with pytest.raises(data.DataError, match="--force"):
        data.prepare(str(src), tmp_path / "bins")
    write_txt(src, STORIES[:2] * 3)
    data.prepare(str(src), tmp_path / "bins", force=True)
    assert data.TokenBins(tmp_path / "bins").meta["documents"]["train"] + 1 == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bins", "s.txt"]


def _bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "nodocs.txt").write_text("\n<|endoftext|>\n\n<|endoftext|>\n")
    (tmp_path / "one.txt").write_text("Only one story.")
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    (tmp_path / "table.csv").write_text("text\nhello\n")
    (tmp_path / "emptydir").mkdir()
    return {
        "missing.txt": "no such file",
        "empty.txt": "empty",
        "latin1.txt": "not UTF-8",
        "nodocs.txt": "no documents",
        "one.txt": "at least 2 documents",
        "bad.jsonl": "field 'text'",
        "emptydir": "no .txt",
    }


@pytest.mark.parametrize("name", ["missing.txt", "empty.txt", "latin1.txt", "nodocs.txt",
                                  "one.txt", "bad.jsonl", "emptydir"])
def test_bad_input_ends_with_one_line_and_no_output(tmp_path, name):
    expected = _bad_inputs(tmp_path)[name]
    out = tmp_path / "bins"
    result = subprocess.run(
        [sys.executable, "-m", "tjepa.data", "--source", str(tmp_path / name), "--out", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and name in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert not any(p.name.startswith(".bins") for p in tmp_path.iterdir())


def test_unknown_encoding_is_a_clear_error():
    with pytest.raises(data.DataError, match="unknown encoding 'nope'"):
        data.get_encoding("nope")


def test_encoding_that_needs_the_network_says_what_to_do(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(data.DataError, match="--encoding cl100k_base"):
        data.get_encoding("gpt2")


def test_tinystories_source_explains_how_to_work_offline(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(data.DataError, match="tinytales"):
        data.read_corpus("tinystories")


def test_loader_is_deterministic_and_resumes_from_its_position(tinytales_bins):
    split = data.TokenBins(tinytales_bins).split("train")
    a = data.DocumentLoader(split, batch_size=7, block_size=64, seed=3)
    batches = [a.next_batch() for _ in range(5)]
    b = data.DocumentLoader(split, batch_size=7, block_size=64, seed=3, position=3 * 7)
    tokens, lengths = b.next_batch()
    assert np.array_equal(tokens, batches[3][0]) and np.array_equal(lengths, batches[3][1])
    assert lengths.max() <= 64


def test_loader_truncates_documents_to_the_block_and_pads_with_zeros(tinytales_bins):
    split = data.TokenBins(tinytales_bins).split("val")
    tokens, lengths = split.batch(np.arange(len(split)), block_size=50)
    assert (lengths <= 50).all()
    first = int(lengths[0])
    assert np.array_equal(tokens[0, :first].numpy(), split.document(0)[:first].astype(np.int64))
    short = int(lengths.argmin())
    assert (tokens[short, lengths[short]:] == 0).all()


def test_tinystories_sample_prepares(tinystories_sample, tmp_path):
    summary = data.prepare(str(tinystories_sample), tmp_path / "sample")
    assert summary["documents"] > 100
    assert summary["vocab_size"] < 10_000


def test_vocab_from_a_run_tokenizes_new_text_with_that_runs_vocabulary(tinytales_bins, tmp_path,
                                                                     capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "vocab.json").write_text((tinytales_bins / "meta.json").read_text())
    stories = tmp_path / "mine.txt"
    stories.write_text("\n<|endoftext|>\n".join(["Lily saw a quokka by the lake."] * 20))
    assert data.main(["--source", str(stories), "--out", str(tmp_path / "mine"),
                      "--vocab-from", str(run)]) == 0
    bins = data.TokenBins(tmp_path / "mine")
    assert bins.meta["id_map"] == data.TokenBins(tinytales_bins).meta["id_map"]
    assert data.UNKNOWN_ID in bins.split("train").tokens  # "quokka" is not in tinytales
    assert data.main(["--source", str(stories), "--out", str(tmp_path / "x"),
                      "--vocab-from", str(tmp_path)]) == 2
    assert "no vocab.json" in capsys.readouterr().err
