"""The probes' inputs: texts made from raw stories, and their labels, with no tagger or parser.

``tjepa.probe`` embeds what this module makes and fits the readouts; here each probe is only a
rule for turning stories (token ids) into altered texts and labels, split by split:

- ``chunk_pairs``: two chunks of a story, or of two stories (``same_story``);
- ``reordered``: a story's halves swapped, or a window of its words shuffled (``order:*``);
- the sentence probes (``DISCOURSE``, kind ``sentences``), each built from a story's
  sentences — cut after every token that ends one (``sentence_ends``) — and each leaving a
  story's first sentence out, so that a displaced "Once upon a time" cannot tell:

  - ``bigram_shift`` (SentEval, Conneau et al. 2018, §3): one sentence, with two adjacent
    words swapped or not;
  - ``pair_order`` (DiscoEval's binary sentence ordering, Chen et al. 2019, §3): two
    consecutive sentences, in their order or swapped;
  - ``position`` (DiscoEval's sentence position): five consecutive sentences with one of
    them moved to the front; which place did it come from (5 classes)?
  - ``halves``: the story after its first sentence, cut at a sentence end, with its two halves
    swapped at the sentence end nearest the middle, or not;
  - ``foreign`` (discourse coherence, as DiscoEval's DC): four consecutive sentences, one of
    them (not the first) replaced by the sentence of another story nearest in length, or not.

  The first four alter only the order of the same tokens: length and a bag of words read
  nothing by construction (a positional bag of words still reads ``halves``, by where the
  ending went). ``foreign`` brings in another story's words, which a bag of words may read
  (another story's names); its baselines say how far that goes.

``probe_documents`` picks the stories a suite reads and ``document_probe_texts`` turns them
into every document probe's texts and labels, in the order the suite scores them: what
``probe.run_probes`` embeds and ``probe.shortcut_scores`` counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from tjepa import data

SHUFFLE_WINDOW = 8
POSITION_SENTENCES = 5  # sentences in a ``position`` window: its number of classes
FOREIGN_SENTENCES = 4  # sentences in a ``foreign`` window
MIN_SENTENCE_TOKENS = 4  # shorter sentences ("Yes!") sit out bigram_shift
ORDER_MIN_TOKENS = 24  # stories shorter than this sit out the order probes


def cut_stories(split: data.DocumentSplit, documents: Iterable[int], block_size: int
                ) -> list[np.ndarray]:
    """The ``documents`` of a split as the encoder reads them: their first ``block_size``
    tokens, int64."""
    return [np.asarray(split.document(d)[:block_size], dtype=np.int64) for d in documents]


def chunk_pairs(sequences: list[np.ndarray], seed: int = 0
                ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Each story cut at a random point between 30 % and 70 % of its length; the first chunk
    paired with its own second chunk (label 1) or, half the time, with the second chunk of the
    story whose second chunk is closest in length (label 0)."""
    rng = np.random.default_rng(seed)
    cut = [int(np.clip(round(len(s) * rng.uniform(0.3, 0.7)), 1, len(s) - 1))
           for s in sequences]
    first = [s[:c] for s, c in zip(sequences, cut, strict=True)]
    second = [s[c:] for s, c in zip(sequences, cut, strict=True)]
    same = rng.random(len(sequences)) < 0.5
    partner = np.where(same, np.arange(len(sequences)),
                       _length_neighbours([len(s) for s in second], rng))
    return first, [second[p] for p in partner], same.astype(np.int64)


def sentence_ends(vocab: data.Vocabulary) -> np.ndarray:
    """Which compact ids end a sentence (their text ends in . ! or ?, quotes aside): (V,)."""
    text = vocab.decode_tokens(range(1, vocab.size))
    ends = [t.strip().rstrip("\"'”’").endswith((".", "!", "?")) for t in text]
    return np.array([False, *ends])


def reordered(sequences: list[np.ndarray], how: str, ends: np.ndarray, seed: int = 0
              ) -> tuple[list[np.ndarray], np.ndarray]:
    """Half the sequences altered without changing which tokens they hold (label 1), half as
    written (label 0). ``halves``: the two halves swapped at the sentence end nearest the
    middle (the middle when there is none); ``words``: ``SHUFFLE_WINDOW`` tokens in the middle
    shuffled."""
    rng = np.random.default_rng(seed)
    altered = rng.random(len(sequences)) < 0.5
    out = []
    for s, alter in zip(sequences, altered, strict=True):
        s = np.asarray(s)
        if not alter:
            out.append(s)
        elif how == "halves":
            out.append(_swap_halves(s, ends))
        else:
            n = len(s)
            start = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4 - SHUFFLE_WINDOW)))
            window = s[start : start + SHUFFLE_WINDOW]
            shuffled = window[rng.permutation(len(window))]
            if np.array_equal(shuffled, window):
                shuffled = window[::-1]
            out.append(np.concatenate([s[:start], shuffled, s[start + SHUFFLE_WINDOW :]]))
    return out, altered.astype(np.int64)


# --- the discourse probes: from sentences ----------------------------------------------------


def split_sentences(story: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
    """A story's sentences, each cut after a token that ends one; a tail with no end is a
    sentence of its own."""
    story = np.asarray(story, dtype=np.int64)
    pieces = np.split(story, np.flatnonzero(ends[story]) + 1)
    return [p for p in pieces if len(p)]


def bigram_shift(stories: list[list[np.ndarray]], block_size: int, seed: int = 0
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """One sentence of each story (never its first), with two adjacent tokens swapped (label
    1) or as written (0). The pair never includes the final punctuation, and its two tokens
    differ."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for sentences in stories:
        body = [s[:block_size] for s in sentences[1:] if len(s) >= MIN_SENTENCE_TOKENS]
        if not body:
            continue
        s = body[rng.integers(len(body))].copy()
        label = int(rng.random() < 0.5)
        if label:
            candidates = np.flatnonzero(s[:-2] != s[1:-1])  # pairs (i, i + 1) before the end
            if not len(candidates):
                continue
            i = int(candidates[rng.integers(len(candidates))])
            s[i], s[i + 1] = s[i + 1], s[i]
        texts.append(s)
        labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


def pair_order(stories: list[list[np.ndarray]], block_size: int, seed: int = 0
               ) -> tuple[list[np.ndarray], np.ndarray]:
    """Two consecutive sentences of each story (after its first), swapped (label 1) or in
    order (0)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for sentences in stories:
        if len(sentences) < 3:
            continue
        i = int(rng.integers(1, len(sentences) - 1))
        a, b = sentences[i], sentences[i + 1]
        label = int(rng.random() < 0.5)
        texts.append(np.concatenate([b, a] if label else [a, b])[:block_size])
        labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


def position(stories: list[list[np.ndarray]], block_size: int, seed: int = 0
             ) -> tuple[list[np.ndarray], np.ndarray]:
    """``POSITION_SENTENCES`` consecutive sentences of each story (after its first) with the
    one at place k moved to the front; the label is k (0: as written)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for sentences in stories:
        if len(sentences) < POSITION_SENTENCES + 1:
            continue
        start = int(rng.integers(1, len(sentences) - POSITION_SENTENCES + 1))
        window = sentences[start : start + POSITION_SENTENCES]
        k = int(rng.integers(POSITION_SENTENCES))
        moved = [window[k], *window[:k], *window[k + 1 :]]
        texts.append(np.concatenate(moved)[:block_size])
        labels.append(k)
    return texts, np.array(labels, dtype=np.int64)


def halves(stories: list[list[np.ndarray]], block_size: int, seed: int = 0
           ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each story after its first sentence, as many whole sentences as fit in
    ``block_size`` tokens, with its halves swapped at the sentence boundary nearest the middle
    (label 1) or as written (0). No opening to displace, and no seam where a cut sentence
    meets one."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for sentences in stories:
        lengths = np.cumsum([len(s) for s in sentences[1:]])
        kept = int(np.searchsorted(lengths, block_size, side="right"))
        if kept < 2:
            continue
        body = sentences[1 : 1 + kept]
        cuts = np.cumsum([len(s) for s in body])[:-1]  # boundaries between sentences
        text = np.concatenate(body)
        label = int(rng.random() < 0.5)
        if label:
            cut = int(cuts[np.abs(cuts - len(text) / 2).argmin()])
            text = np.concatenate([text[cut:], text[:cut]])
        texts.append(text)
        labels.append(label)
    return texts, np.array(labels, dtype=np.int64)


def foreign(stories: list[list[np.ndarray]], block_size: int, seed: int = 0
            ) -> tuple[list[np.ndarray], np.ndarray]:
    """``FOREIGN_SENTENCES`` consecutive sentences of each story (after its first); in half
    of them (label 1) one sentence after the window's first is replaced by a sentence of
    another story, the one nearest it in length."""
    rng = np.random.default_rng(seed)
    windows = []
    for sentences in stories:
        if len(sentences) >= FOREIGN_SENTENCES + 1:
            start = int(rng.integers(1, len(sentences) - FOREIGN_SENTENCES + 1))
            windows.append(sentences[start : start + FOREIGN_SENTENCES])
    if len(windows) < 2:
        return [], np.zeros(0, dtype=np.int64)
    place = rng.integers(1, FOREIGN_SENTENCES, size=len(windows))
    replaced = [w[p] for w, p in zip(windows, place, strict=True)]
    donor = _length_neighbours([len(s) for s in replaced], rng)  # another window each
    labels = (rng.random(len(windows)) < 0.5).astype(np.int64)
    texts = []
    for i, (window, p) in enumerate(zip(windows, place, strict=True)):
        window = list(window)
        if labels[i]:
            window[p] = replaced[donor[i]]
        texts.append(np.concatenate(window)[:block_size])
    return texts, labels


# name → rule; each takes the stories' sentences, the block size and a seed
DISCOURSE: dict[str, Callable[..., tuple[list[np.ndarray], np.ndarray]]] = {
    "bigram_shift": bigram_shift,
    "pair_order": pair_order,
    "position": position,
    "halves": halves,
    "foreign": foreign,
}


# --- the suite's texts, probe by probe --------------------------------------------------


def probe_documents(bins: data.TokenBins, block_size: int, seed: int, max_documents: int
                    ) -> tuple[dict, dict, dict[str, list[np.ndarray]]]:
    """The stories the document probes read: the splits, each split's documents (a seeded
    sample of ``max_documents`` training stories, the first ``max_documents`` validation ones)
    and their first ``block_size`` tokens."""
    splits = {"train": bins.split("train"), "val": bins.split("val")}
    rng = np.random.default_rng(seed)
    docs = {"train": np.sort(rng.permutation(len(splits["train"]))[:max_documents]),
            "val": np.arange(min(len(splits["val"]), max_documents))}
    return splits, docs, {s: cut_stories(splits[s], docs[s], block_size) for s in splits}


def document_probe_texts(bins: data.TokenBins, splits: dict, docs: dict, stories: dict,
                         block_size: int, seed: int):
    """The document probes' texts and labels, probe by probe, as ``(name, kind, texts,
    labels)``: ``texts[split]`` is a tuple of lists of token sequences (one, or two for a pair
    probe, ``same_story``, whose features are then paired) and ``labels[split]`` an (N,)
    int64 array. tinytales' factors first, from the whole story (``story`` or ``lexical``) or
    its prefix (``nonlinear``), then the probes any corpus has."""
    factors = bins.factors()
    if factors:
        contextual = factors.get("contextual", {})
        prefix = ({s: [x[:p] for x, p in zip(stories[s], prefix_lengths(factors, docs, s),
                                             strict=True)] for s in splits}
                  if "prefix_tokens" in factors else None)
        for factor in factors["values"]:
            labels = {s: factor_labels(factors, factor, docs, s) for s in splits}
            from_prefix = contextual.get(factor) == "prefix"
            kind = "nonlinear" if from_prefix else "story" if factor in contextual else "lexical"
            texts = prefix if from_prefix else stories
            yield f"factor:{factor}", kind, {s: (texts[s],) for s in splits}, labels

    pairs = {s: chunk_pairs(stories[s], seed) for s in splits}
    yield ("same_story", "story", {s: pairs[s][:2] for s in splits},
           {s: pairs[s][2] for s in splits})

    ends = sentence_ends(bins.vocab)
    long_enough = {s: [x for x in stories[s] if len(x) >= ORDER_MIN_TOKENS] for s in splits}
    # a corpus of very short documents has nothing to reorder
    for how in ("halves", "words") if min(map(len, long_enough.values())) >= 2 else ():
        altered = {s: reordered(long_enough[s], how, ends, seed + i)
                   for i, s in enumerate(splits)}
        yield (f"order:{how}", "story", {s: (altered[s][0],) for s in splits},
               {s: altered[s][1] for s in splits})

    sentences = {s: [split_sentences(splits[s].document(d), ends) for d in docs[s]]
                 for s in splits}
    for name, make in DISCOURSE.items():
        made = {s: make(sentences[s], block_size, seed + i) for i, s in enumerate(splits)}
        if min(len(np.unique(labels)) for _, labels in made.values()) < 2:
            continue  # too few stories of enough sentences for this probe
        yield (f"discourse:{name}", "sentences", {s: (made[s][0],) for s in splits},
               {s: made[s][1] for s in splits})


def factor_labels(factors: dict, factor: str, docs: dict, split: str) -> np.ndarray:
    """A tinytales factor's value for each of a split's probe documents, as the index of that
    value among the factor's values: (N,) int64."""
    index = {v: i for i, v in enumerate(factors["values"][factor])}
    return np.array([index[v] for v in np.asarray(factors[split][factor])[docs[split]]],
                    dtype=np.int64)


def prefix_lengths(factors: dict, docs: dict, split: str) -> np.ndarray:
    """How many tokens of each of a split's probe documents come before its tinytales ending."""
    return np.asarray(factors["prefix_tokens"][split])[docs[split]]


# --- helpers -------------------------------------------------------------------------------


def _swap_halves(s: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The sequence with its halves swapped after the sentence end nearest the middle (the
    middle when there is none)."""
    n = len(s)
    boundaries = np.flatnonzero(ends[s[: n - 1]]) + 1
    cut = int(boundaries[np.abs(boundaries - n / 2).argmin()]) if len(boundaries) else n // 2
    return np.concatenate([s[cut:], s[:cut]])


def _length_neighbours(lengths: list[int], rng: np.random.Generator) -> np.ndarray:
    """For each item, another item next to it in length order (up or down at random): a
    partner of nearly the same length that is never itself (when there are two or more)."""
    n = len(lengths)
    order = np.argsort(lengths, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    step = np.where(rng.random(n) < 0.5, 1, -1)
    neighbour = rank + step
    neighbour = np.where((neighbour < 0) | (neighbour >= n), rank - step, neighbour)
    return order[neighbour.clip(0, n - 1)]
