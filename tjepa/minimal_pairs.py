"""Minimal pairs of the project's own, built from text by rule, in BLiMP's format.

    python -m tjepa.minimal_pairs --source ../shared/data/tinystories_valid_sample.txt \\
        --out data/pairs/tinystories.jsonl [--per-paradigm 300] [--seed 0]
    python -m tjepa.minimal_pairs --source tinytales --out data/pairs/tinytales.jsonl

Each paradigm is a rule that turns a sentence of the text into a grammatical sentence and an
ungrammatical twin that differ in one point (``PARADIGMS``). No tagger or parser: the rules
read words, so they stick to points a word carries alone (a pronoun and its verb, a
determiner and its noun). Each record is ``{"sentence_good", "sentence_bad", "UID", "field"}``
plus ``"ngrams"``, what the n-gram baselines can read of it by construction:

- ``agreement``: *she is* / *she are*, *the dogs were* / *the dogs was* (``is``/``are`` and
  ``was``/``were`` after a pronoun, or a determiner and its noun); the unigram reads which
  verb is commoner, the bigram the subject's last word beside its verb;
- ``determiner_number``: *this dog* / *these dog*, *two dogs* / *one dogs* (``this``/``these``,
  ``one``/``two``, ``many``); the unigram reads which determiner is commoner, the bigram the
  determiner beside its noun;
- ``article_a_an``: *a dog* / *an dog*, *an apple* / *a apple*; the unigram reads that *a*
  is commoner, the bigram the article beside its noun;
- ``pronoun_case``: *She smiled* / *Her smiled*, *saw him.* / *saw he.*; both read the
  pronoun and its neighbours;
- ``irregular_past``: *went* / *goed*, *ran* / *runned*; the unigram reads that the wrong
  form is rare (and splits into more tokens);
- ``word_swap``: two adjacent words swapped; the unigram reads nothing, the same words (a
  tie by construction), the bigram the order of neighbours.

No edit in one place (the words that differ and the word after them) makes more than
``MAX_SAME_EDIT`` pairs of a paradigm, so that *One day* / *Two day* cannot fill one, and no
change of words (*a* → *an*) more than half of it, so that *an* → *a* and *were* → *was*
count too.

So every paradigm but ``word_swap`` can be solved by a unigram model's word frequencies, and
all of them by a bigram model's: a model must beat the bigram to show grammar a bigram does
not hold.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tjepa import data

PRONOUN_NUMBER = {"singular": {"he", "she", "it"}, "plural": {"they", "we"}}
AGREEING = (("is", "are"), ("was", "were"))  # the singular and the plural form
# words that follow a determiner but carry no noun's number
NOT_NOUNS = {"is", "was", "are", "were", "will", "can", "could", "would", "should", "made",
             "time", "way", "and", "or", "but", "to", "too", "one", "ones", "very", "so",
             "all", "has", "had", "did", "does", "do", "be", "been", "just", "again", "of",
             "more", "last", "by", "little", "big", "small", "other", "another", "who", "that",
             "which", "at", "in", "on", "for", "with", "after", "thing"}
# a determiner before a singular noun → one that needs a plural, and the other way round
NUMBER_SWAP_SINGULAR = {"this": "these", "one": "two"}
NUMBER_SWAP_PLURAL = {"these": "this", "two": "one", "three": "one", "many": "one"}
PRONOUN_ONE = {"no", "every", "some", "any", "the", "each", "that", "this", "which", "only",
               "just"}  # "no one", "the only two"
SUBJUNCTIVE = {"if", "wish", "though", "as"}
COLLECTIVE = {"family", "team", "class", "group", "crowd"}  # "the family were" is English too
AUXILIARIES = {"had", "has", "have", "was", "were", "be", "been", "is", "are"}
MOVABLE = {"often", "always", "also", "all", "never", "just", "still", "then", "there", "too",
           "soon", "now", "together", "again"}  # adverbs that may stand on either side
MAX_SAME_EDIT = 20  # pairs of a paradigm that may share one edit
IRREGULAR = {"went": "goed", "ran": "runned", "came": "comed", "ate": "eated",
             "found": "finded", "made": "maked", "took": "taked", "gave": "gived",
             "told": "telled", "felt": "feeled", "said": "sayed", "got": "getted",
             "thought": "thinked", "caught": "catched", "flew": "flyed", "swam": "swimmed",
             "drew": "drawed", "knew": "knowed", "held": "holded", "sat": "sitted",
             "fell": "falled", "began": "beginned", "brought": "bringed"}
MIN_WORDS, MAX_WORDS = 4, 24
QUOTE = re.compile(r"[\"“”‘]|(^|\s)'|'(\s|$)")  # quotes, but not the apostrophe of "dog's"
WORD = re.compile(r"[a-z]+")


def sentences(text: str) -> list[str]:
    """A text's sentences: cut after . ! or ? (and a closing quote), on one line, of
    ``MIN_WORDS`` to ``MAX_WORDS`` words; quoted speech left out (its punctuation would move),
    each sentence once."""
    found = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [s for s in dict.fromkeys(found) if MIN_WORDS <= len(s.split()) <= MAX_WORDS
            and s[0].isupper() and s[-1] in ".!?" and not re.search(QUOTE, s)]


def _swap_one(sentence: str, pattern: str, make: Callable[[re.Match], str | None],
              rng: random.Random) -> str | None:
    """``sentence`` with one match of ``pattern``, drawn at random, replaced by
    ``make(match)`` (None when no match gives a replacement)."""
    matches = [m for m in re.finditer(pattern, sentence) if make(m) is not None]
    if not matches:
        return None
    m = rng.choice(matches)
    return sentence[:m.start()] + make(m) + sentence[m.end():]


def _number(subject: str) -> str | None:
    """``singular`` or ``plural`` for a pronoun, or a determiner and its noun; None when the
    words do not say."""
    words = subject.lower().split()
    if len(words) == 1:
        return next((n for n, pronouns in PRONOUN_NUMBER.items() if words[0] in pronouns),
                    None)
    determiner, noun = words
    if determiner in ("a", "an", "this", "that"):
        return "singular"
    if determiner in ("these", "those"):
        return "plural"
    if noun in NOT_NOUNS or noun in COLLECTIVE or noun.endswith(("ss", "us", "is")):
        return None
    return "plural" if noun.endswith("s") else "singular"


def _agreement(sentence: str, rng: random.Random) -> str | None:
    def make(m: re.Match) -> str | None:
        subject, found = m[1], m[2]
        if SUBJUNCTIVE & set(m.string[:m.start()].lower().split()[-3:]):
            return None  # "if she were", "as it were"
        singular, plural = next(pair for pair in AGREEING if found in pair)
        number = _number(subject)
        if number == "singular" and found == singular:
            return f"{subject} {plural}"
        if number == "plural" and found == plural:
            return f"{subject} {singular}"
        return None
    determiners = "the|a|an|my|his|her|their|our|your|this|that|these|those"
    subject = rf"(?:(?:[Tt]he|{determiners}) [a-z]+|[A-Za-z]+)"
    return _swap_one(sentence, rf"\b({subject}) (is|are|was|were)\b", make, rng)


def _determiner_number(sentence: str, rng: random.Random) -> str | None:
    def make(m: re.Match) -> str | None:
        determiner, noun = m[1], m[2]
        before = m.string[:m.start()].split()[-1:]
        if noun in NOT_NOUNS or not noun.isalpha() or noun.endswith(("ss", "us", "is")) \
                or before and before[0].lower() in PRONOUN_ONE:
            return None
        plural = noun.endswith("s")
        swapped = (NUMBER_SWAP_PLURAL if plural else NUMBER_SWAP_SINGULAR).get(determiner.lower())
        if swapped is None:
            return None
        return f"{swapped.capitalize() if determiner[0].isupper() else swapped} {noun}"
    words = "|".join(sorted({*NUMBER_SWAP_SINGULAR, *NUMBER_SWAP_PLURAL}))
    return _swap_one(sentence, rf"\b((?i:{words})) ([a-z]+)\b", make, rng)


def _article(sentence: str, rng: random.Random) -> str | None:
    def make(m: re.Match) -> str | None:
        article, word = m[1], m[2]
        if article == "a" and word[0] in "bcdfgjklmnpqrstvwxz":
            return f"an {word}"
        if article == "an" and word[0] in "aeio":
            return f"a {word}"
        return None
    return _swap_one(sentence, r"(?<![A-Za-z])(a|an) ([a-z]+)\b", make, rng)


def _pronoun_case(sentence: str, rng: random.Random) -> str | None:
    def make(m: re.Match) -> str | None:
        return {"He ": "Him ", "She ": "Her ", " him": " he", " them": " they"}.get(m[0])
    return _swap_one(sentence, r"^(?:He|She) | (?:him|them)(?=[.!?,])", make, rng)


def _irregular_past(sentence: str, rng: random.Random) -> str | None:
    def make(m: re.Match) -> str | None:
        before = m.string[:m.start()].lower().split()[-1:]
        if before and before[0] in AUXILIARIES:
            return None  # "had made", "was made": a participle, not the past
        return IRREGULAR.get(m[0])
    return _swap_one(sentence, r"\b[a-z]+\b", make, rng)


def _word_swap(sentence: str, rng: random.Random) -> str | None:
    words = sentence.split(" ")
    # neither the first word (its capital) nor one that carries punctuation moves
    places = [i for i in range(1, len(words) - 1)
              if WORD.fullmatch(words[i]) and WORD.fullmatch(words[i + 1])
              and words[i] != words[i + 1]
              and not {words[i], words[i + 1]} & MOVABLE
              and not (words[i].endswith("ly") or words[i + 1].endswith("ly"))]
    if not places:
        return None
    i = rng.choice(places)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


# name → (the rule, the n-gram baselines that can read it)
PARADIGMS: dict[str, tuple[Callable[[str, random.Random], str | None], dict[str, str]]] = {
    "agreement": (_agreement, {"unigram": "can", "bigram": "can"}),
    "determiner_number": (_determiner_number, {"unigram": "can", "bigram": "can"}),
    "article_a_an": (_article, {"unigram": "can", "bigram": "can"}),
    "pronoun_case": (_pronoun_case, {"unigram": "can", "bigram": "can"}),
    "irregular_past": (_irregular_past, {"unigram": "can", "bigram": "can"}),
    "word_swap": (_word_swap, {"unigram": "tie", "bigram": "can"}),
}


def build_pairs(texts: list[str], per_paradigm: int = 300, seed: int = 0) -> list[dict]:
    """Up to ``per_paradigm`` pairs of each paradigm from the sentences of ``texts``, each
    sentence used once per paradigm, in a seeded order: no edit in one place more than
    ``MAX_SAME_EDIT`` times, no change of words (*a* → *an*) more than half the pairs."""
    rng = random.Random(seed)
    pool = list(dict.fromkeys(s for text in texts for s in sentences(text)))
    rng.shuffle(pool)
    records = []
    for name, (rule, ngrams) in PARADIGMS.items():
        made, edits, changes = 0, Counter(), Counter()
        for sentence in pool:
            bad = rule(sentence, rng)
            if bad is None or bad == sentence:
                continue
            change, edit = _edit(sentence, bad)
            if edits[edit] == MAX_SAME_EDIT or changes[change] == per_paradigm // 2:
                continue
            edits[edit] += 1
            changes[change] += 1
            records.append({"sentence_good": sentence, "sentence_bad": bad, "UID": name,
                            "field": "tjepa", "ngrams": ngrams})
            made += 1
            if made == per_paradigm:
                break
    return records


Words = tuple[str, ...]


def _edit(good: str, bad: str) -> tuple[tuple[Words, Words], tuple[Words, Words]]:
    """What a pair changes — the words that differ, lower-cased and without punctuation — and
    where: the change with the word after it (before it, at the end of the sentence)."""
    a, b = (re.sub(r"[^\w ]", "", text.lower()).split(" ") for text in (good, bad))
    short = min(len(a), len(b))
    start = next((i for i in range(short) if a[i] != b[i]), short)
    end = next((i for i in range(short - start) if a[-1 - i] != b[-1 - i]), short - start)
    change = tuple(a[start:len(a) - end]), tuple(b[start:len(b) - end])
    if end > 0:
        return change, (change[0] + (a[-end],), change[1] + (b[-end],))
    return change, (tuple(a[max(start - 1, 0):]), tuple(b[max(start - 1, 0):]))


def read_texts(source: str) -> list[str]:
    """The documents a source holds: ``tinytales`` (its validation stories) or a local file."""
    if source == "tinytales":
        return data.read_corpus("tinytales", max_documents=2_000).splits["val"]
    return data.read_text_file(Path(source))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.minimal_pairs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="tinytales, or a .txt/.jsonl/.parquet file of stories")
    parser.add_argument("--out", required=True, help="the JSON-lines file to write")
    parser.add_argument("--per-paradigm", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        records = build_pairs(read_texts(args.source), args.per_paradigm, args.seed)
    except data.DataError as e:
        print(f"tjepa.minimal_pairs: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = {name: sum(r["UID"] == name for r in records) for name in PARADIGMS}
    print(f"wrote {out}: {len(records)} pairs; " +
          ", ".join(f"{name} {n}" for name, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
