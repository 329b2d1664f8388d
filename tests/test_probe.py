"""Probes on features with a known answer, and the evaluation of a real (tiny) run."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from tjepa import data, probe, probe_texts
from tjepa.jepa import encode_documents


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


def test_reordered_stories_hold_the_same_tokens_so_length_and_bag_of_words_cannot_tell():
    rng = np.random.default_rng(0)
    stories = [rng.integers(1, 50, int(n)) for n in rng.integers(24, 90, 200)]
    ends = np.zeros(50, dtype=bool)
    ends[7] = True  # token 7 ends a sentence
    for how in ("halves", "words"):
        altered, labels = probe_texts.reordered(stories, how, ends, seed=1)
        assert 0.35 < labels.mean() < 0.65
        for before, after, label in zip(stories, altered, labels, strict=True):
            assert sorted(before) == sorted(after)  # the same bag of tokens, the same length
            assert (not np.array_equal(before, after)) == bool(label)
    # the halves are swapped at the sentence end nearest the middle
    story = np.array([1, 2, 3, 7, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
    swapped = next(a for a, y in zip(*probe_texts.reordered([story] * 8, "halves", ends, seed=0),
                                     strict=True) if y)
    assert swapped.tolist() == [8, 9, 10, 11, 12, 13, 14, 15, 1, 2, 3, 7, 4, 5, 6, 7]


def test_positional_words_counts_each_quarter_apart_so_swapped_halves_show():
    story = torch.arange(1, 17)[None, :]  # 16 distinct tokens: 4 per quarter
    swapped = torch.cat([story[:, 8:], story[:, :8]], dim=1)
    lengths = torch.tensor([16])
    assert torch.equal(probe.bag_of_words(story, lengths), probe.bag_of_words(swapped, lengths))
    assert not torch.equal(probe.positional_words(story, lengths),
                           probe.positional_words(swapped, lengths))
    # written out: token i of a text of n sits in quarter 4i // n, one row of counts each
    tokens = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0], [3, 3, 4, 4, 4, 4, 4, 4]])
    lengths = torch.tensor([5, 8])  # the first row ends in padding
    by_hand = torch.zeros(2, probe.POSITION_PARTS, probe.BAG_OF_WORDS_BUCKETS)
    for row, n in enumerate(lengths.tolist()):
        for i in range(n):
            by_hand[row, probe.POSITION_PARTS * i // n, tokens[row, i]] += 1
    by_hand *= probe.POSITION_PARTS / lengths[:, None, None]
    assert torch.allclose(probe.positional_words(tokens, lengths), by_hand.flatten(1))


def test_same_story_pairs_cannot_be_told_apart_by_their_lengths(tinytales_bins):
    split = data.TokenBins(tinytales_bins).split("train")
    stories = [np.asarray(split.document(i)) for i in range(1600)]

    def length_accuracy(first, second, label):
        x = probe.pair_features(*(torch.tensor([[len(c)] for c in chunks], dtype=torch.float)
                                  for chunks in (first, second)))
        y = torch.from_numpy(label)
        return probe.linear_probe(x[:1200], y[:1200], x[1200:], y[1200:])

    assert length_accuracy(*probe_texts.chunk_pairs(stories, seed=0)) < 0.62
    # cut in the middle, with any other story as the negative, the lengths give it away
    halves = [s[: len(s) // 2] for s in stories], [s[len(s) // 2 :] for s in stories]
    rng = np.random.default_rng(0)
    same = rng.random(len(stories)) < 0.5
    partner = np.where(same, np.arange(len(stories)), rng.permutation(len(stories)))
    assert length_accuracy(halves[0], [halves[1][p] for p in partner],
                           same.astype(np.int64)) > 0.8


def test_the_best_baseline_is_the_best_of_random_init_and_the_shortcuts():
    result = probe.ProbeResult("p", "story", trained=0.8, random_init=0.6,
                               baselines={"length": 0.5, "bag_of_words": 0.7})
    assert (result.best_baseline, result.best_baseline_name) == (0.7, "bag_of_words")
    assert result.margin == pytest.approx(0.1)
    (record,) = probe.as_dicts([result])
    assert record["best_baseline"] == 0.7 and probe.ProbeResult.from_dict(record) == result
    assert probe.ProbeResult.from_dict({**record, "kind": "semantic"}) == result  # older name


def test_the_training_gain_leaves_out_every_probe_a_shortcut_reads_and_passed_needs_noise():
    results = [
        probe.ProbeResult("read", "story", trained=0.95, random_init=0.5,
                          baselines={"positional_words": 0.99}),  # a shortcut reads it
        probe.ProbeResult("proof", "sentences", trained=0.7, random_init=0.5,
                          baselines={"bag_of_words": 0.6}),
        probe.ProbeResult("close", "nonlinear", trained=0.64, random_init=0.6,
                          baselines={"length": 0.5}),
        probe.ProbeResult("word", "lexical", trained=0.5, random_init=0.4,
                          baselines={"bag_of_words": 0.8}),  # a word names it
        probe.ProbeResult("forecast:x", "pretext", trained=1.0, random_init=0.5)]
    assert [r.name for r in results if r.in_headline] == ["proof", "close"]
    assert probe.training_gain(results) == pytest.approx((0.2 + 0.04) / 2)
    assert probe.passed(results) == ["proof"]  # close beats its baseline by under NOISE
    assert probe.training_gain(results[:1]) is None


class _Lookup(torch.nn.Module):
    """An 'encoder' whose output at a position is its token's row of a table, or noise."""

    def __init__(self, noise: bool):
        super().__init__()
        self.noise = noise
        self.table = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))

    def forward(self, tokens, positions, mask):
        if self.noise:
            return torch.randn(*tokens.shape, 16, generator=torch.Generator().manual_seed(1))
        return self.table[tokens]


def test_token_share_is_one_for_a_code_of_the_word_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    stories = [rng.integers(1, 20, size=rng.integers(10, 40)) for _ in range(50)]
    def targets(encoder):
        return partial(encode_documents, encoder)

    assert probe.token_share(targets(_Lookup(noise=False)), stories) > 0.999
    assert probe.token_share(targets(_Lookup(noise=True)), stories) < 0.05


def test_features_come_back_in_the_sequences_order_though_batched_by_length():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 50, int(n)) for n in rng.integers(3, 90, 130)]

    def sums(tokens, lengths):  # what each padded row holds, padding left out
        valid = torch.arange(tokens.shape[1]) < lengths[:, None]
        return torch.stack([(tokens * valid).sum(1).float(), lengths.float()], dim=1)

    expected = torch.tensor([[float(s.sum()), float(len(s))] for s in sequences])
    assert torch.equal(probe.features_of(sums, sequences, batch_size=16), expected)


def test_an_encoder_reads_each_distinct_text_once_across_probes():
    rng = np.random.default_rng(0)
    stories = [rng.integers(1, 50, int(n)) for n in rng.integers(3, 40, 20)]
    read = []

    def sums(tokens, lengths):
        read.extend(int(n) for n in lengths)
        valid = torch.arange(tokens.shape[1]) < lengths[:, None]
        return (tokens * valid).sum(1, keepdim=True).float()

    seen: dict = {}
    first = probe.features_once(sums, stories[:12], seen)
    altered = [s[::-1].copy() if i % 2 else s.copy() for i, s in enumerate(stories)]  # new arrays
    second = probe.features_once(sums, altered, seen)
    assert torch.equal(first, probe.features_of(sums, stories[:12]))
    assert torch.equal(second, probe.features_of(sums, altered))
    read.clear()
    probe.features_once(sums, altered + stories[:12], seen)
    assert read == []  # every text met before
    fresh = [s[1:] for s in stories if len(s) > 4]
    probe.features_once(sums, fresh + fresh, seen)
    assert sorted(read) == sorted(len(s) for s in fresh)  # each new text once


def test_the_token_readout_learns_only_words_that_recur_in_its_sample():
    x = torch.arange(7.0)[:, None]
    y = torch.tensor([4, 9, 4, 7, 9, 4, 3])
    kept_x, kept_y = probe.recurring(x, y)
    assert kept_y.tolist() == [4, 9, 4, 9, 4] and kept_x[:, 0].tolist() == [0, 1, 2, 4, 5]
