"""The probes' inputs: sentences cut where they end, and discourse probes that hold the same
tokens either way, never use a story's opening, and label what they did."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tjepa import probe_texts

END = 1  # the one token that ends a sentence here
ENDS = np.zeros(300_000, dtype=bool)
ENDS[END] = True


def _stories(n: int = 40, sentences: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Stories whose every token but the end is unique to its story and sentence, so a text
    says where each of its tokens came from: token = 1000·(story+1) + 10·sentence + place."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        parts = [np.r_[1000 * (j + 1) + 10 * k + np.arange(rng.integers(4, 9)), END]
                 for k in range(sentences)]
        out.append(np.concatenate(parts))
    return out


def _sentences(stories):
    return [probe_texts.split_sentences(s, ENDS) for s in stories]


def test_split_sentences_cuts_after_each_end_and_keeps_every_token():
    story = np.array([5, 6, END, 7, END, 8, 9])
    pieces = probe_texts.split_sentences(story, ENDS)
    assert [p.tolist() for p in pieces] == [[5, 6, END], [7, END], [8, 9]]
    assert np.array_equal(np.concatenate(pieces), story)


@pytest.mark.parametrize("name", ["bigram_shift", "pair_order", "position", "halves"])
def test_order_probes_hold_the_same_tokens_either_way_and_skip_the_opening(name):
    stories = _stories()
    sentences = _sentences(stories)
    texts, labels = probe_texts.DISCOURSE[name](sentences, 192, seed=3)
    assert len(texts) == len(stories) and set(labels.tolist()) >= {0, 1}
    for story, text, label in zip(sentences, texts, labels, strict=True):
        tokens = [t for t in text.tolist() if t != END]
        assert all(t // 10 % 100 != 0 for t in tokens)  # nothing of sentence 0, the opening
        sentence_ids = sorted({t // 10 for t in tokens})  # the sentences it drew on, whole
        source = np.concatenate([s for s in story if s[0] // 10 in sentence_ids])
        assert Counter(text.tolist()) == Counter(source.tolist())  # same tokens, same counts
        assert np.array_equal(text, source) == (label == 0)  # altered exactly when labelled


def test_bigram_shift_swaps_two_neighbours_before_the_final_end():
    texts, labels = probe_texts.bigram_shift(_sentences(_stories()), 192, seed=0)
    for text, label in zip(texts, labels, strict=True):
        assert text[-1] == END
        moved = np.flatnonzero(text != np.sort(text[:-1]).tolist() + [END])
        assert len(moved) == (2 if label else 0)
        if label:
            assert moved[1] == moved[0] + 1


def test_position_labels_the_place_the_front_sentence_came_from():
    texts, labels = probe_texts.position(_sentences(_stories(n=200)), 192, seed=0)
    assert set(labels.tolist()) == set(range(probe_texts.POSITION_SENTENCES))
    for text, k in zip(texts, labels, strict=True):
        order = list(dict.fromkeys(t // 10 for t in text.tolist() if t != END))
        rest = order[1:]
        assert rest == sorted(rest)  # the others keep their order
        assert sum(s < order[0] for s in rest) == k  # k of them came before it


def test_foreign_replaces_one_later_sentence_with_another_storys():
    stories = _stories(n=100)
    texts, labels = probe_texts.foreign(_sentences(stories), 192, seed=0)
    assert 0.35 < labels.mean() < 0.65
    for text, label in zip(texts, labels, strict=True):
        owners = [t // 1000 for t in text.tolist() if t != END]
        foreign = [o for o in owners if o != owners[0]]
        assert bool(foreign) == bool(label)
        if label:  # one whole sentence, from one other story
            assert len({t // 10 for t in text.tolist() if t != END and t // 1000 != owners[0]}
                       ) == 1


def test_halves_swaps_at_a_sentence_boundary_and_keeps_whole_sentences():
    texts, labels = probe_texts.halves(_sentences(_stories()), 40, seed=0)
    assert set(labels.tolist()) == {0, 1}
    for text, label in zip(texts, labels, strict=True):
        assert len(text) <= 40 and text[-1] == END  # whole sentences only, none cut
        order = list(dict.fromkeys(t // 10 for t in text.tolist() if t != END))
        written = sorted(order)
        turns = [r for r in range(len(written)) if order == written[r:] + written[:r]]
        assert len(turns) == 1  # the story's sentences, rotated at a boundary
        assert (turns[0] != 0) == bool(label)  # turned at a boundary exactly when labelled


def test_stories_too_short_for_a_probe_sit_it_out():
    short = _sentences(_stories(sentences=3))
    texts, labels = probe_texts.position(short, 192)
    assert texts == [] and len(labels) == 0
