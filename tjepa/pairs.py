"""Grammar, zero-shot: minimal pairs scored by a run's own loss, beside n-gram baselines.

    python -m tjepa.pairs RUN [RUN ...] --pairs FILE.jsonl [--checkpoint PATH] [--json]
    python -m tjepa.pairs RUN [RUN ...] --pairs FILE.jsonl --saved [--readme PAGE --marker NAME]
    python -m tjepa.pairs RUN [RUN ...] --pairs FILE.jsonl --saved --curve [--readme ...]

A minimal pair is two sentences that differ in one grammatical point ("the dogs *are* / *is*
happy"); a model knows the point when it prefers the grammatical one, with no training on
the task (BLiMP, Warstadt et al. 2020; the BabyLM suites). The file is BLiMP's JSON lines:
``sentence_good`` and ``sentence_bad``, grouped into paradigms by ``UID`` (or ``field``) when
present; ``python -m tjepa.minimal_pairs`` writes pairs of the project's own in that format.

Each sentence gets a score, lower is better: the sum over its tokens of the run's own loss
with that token hidden and every other token its context (``masking.each_token_hidden``: one
view per token, batched). For a JEPA that loss is its **energy** (LeCun 2022): how far the
predictor's guess from the context lands from the target encoder's view of the hidden token.
For the masked LM it is the cross-entropy of the hidden token, its pseudo-log-likelihood
(Salazar et al. 2020). Beside it, the **readout score**: the cross-entropy under a linear word
readout fitted on what the run holds at hidden positions of its own training text
(``Learner.losses_and_states``), so that a JEPA and a masked LM are also read through the
same kind of head. A pair is right when the grammatical sentence scores lower; a tie counts one
half. Accuracy is reported per paradigm and overall (the mean over paradigms), with the
run's random-init twin, the rule "the sentence of fewer tokens wins" (every score here is a
sum over tokens), unigram and bigram models of the run's training bins (add-k) on the same
pairs, and the share of the pairs' tokens the run's vocabulary never saw. Each sentence is
tokenized as it stands inside a story, after a space (``encode``).

Writes ``pairs-<file>.json`` into the run folder (``pairs-<file>@<checkpoint>.json`` for a
checkpoint other than ``last``). A sweep's folder (one holding ``sweep.json``) stands for its
runs, variant by variant and seed by seed. ``--saved`` tables the saved reports of several
runs, their seeds (``NAME-seedK``) averaged, and ``--curve`` their overall accuracy at each
saved checkpoint.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from tjepa import data, probe
from tjepa.config import ConfigError
from tjepa.masking import MaskedBatch, MaskSampler, each_token_hidden
from tjepa.model import Learner
from tjepa.runs import RunConfig, RunError, checkpoint_path, load_run
from tjepa.tables import command_line, markdown_table, write_readme_table

NGRAM_K = 0.1  # add-k smoothing of the unigram and bigram counts
READOUT_FLOOR = 1e-3  # the readout's weight on a uniform word: a word it never saw is no NaN
READOUT_POSITIONS = 20_000  # hidden positions of the training text the readout is fitted on
VIEWS_PER_BATCH = 2048  # hidden tokens scored in one forward pass
TIE = dict(rtol=1e-7, atol=1e-9)  # two scores this close count as a tie
BASELINES = ("random_init", "length", "unigram", "bigram")  # "length": the shorter one wins


class PairsError(ValueError):
    """A pairs file that cannot be read; the message names the file and the line."""


@dataclass
class Pair:
    good: str
    bad: str
    paradigm: str


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a BLiMP-format JSON-lines file; the first bad line stops it, named."""
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"{path}: no such pairs file")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PairsError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise PairsError(f"{where}: expected an object with sentence_good and "
                             "sentence_bad")
        for key in ("sentence_good", "sentence_bad"):
            if key not in record:
                raise PairsError(f"{where}: no {key}")
            if not isinstance(record[key], str) or not record[key].strip():
                raise PairsError(f"{where}: {key} is empty")
        paradigm = record.get("UID") or record.get("field") or "all"
        pairs.append(Pair(record["sentence_good"], record["sentence_bad"], str(paradigm)))
    if not pairs:
        raise PairsError(f"{path}: no pairs in the file")
    return pairs


# --- scoring ---------------------------------------------------------------------------------


def encode(vocab: data.Vocabulary, sentence: str) -> np.ndarray:
    """A sentence's token ids as it would stand inside a story, after a space: a story's
    sentences but its first are written so, and BPE gives *She* and * She* different ids."""
    return vocab.encode(" " + sentence.strip()).astype(np.int64)


@torch.no_grad()
def sentence_scores(losses_at: Callable[[MaskedBatch], Tensor], sequences: list[np.ndarray],
                    device: str = "cpu", progress: bool = False, desc: str = "score"
                    ) -> np.ndarray:
    """Each sequence's scores: the sums over its tokens of ``losses_at(batch)`` (V, K), K
    losses at each view's one hidden token, with that token hidden and the rest its context.
    Batched by length, about ``VIEWS_PER_BATCH`` hidden tokens a pass: (N, K) float64."""
    order = np.argsort([len(s) for s in sequences], kind="stable")
    chunks, chunk, views = [], [], 0
    for i in order:
        if chunk and views + len(sequences[i]) > VIEWS_PER_BATCH:
            chunks.append(chunk)
            chunk, views = [], 0
        chunk.append(i)
        views += len(sequences[i])
    chunks.append(chunk)
    scores = None
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        tokens, lengths = probe.pad([sequences[i] for i in chunk])
        batch = each_token_hidden(tokens, lengths).to(device)
        losses = losses_at(batch).double().cpu()  # (V, K)
        sums = torch.zeros(len(chunk), losses.shape[1], dtype=torch.float64).index_add_(
            0, batch.document.cpu(), losses)
        if scores is None:
            scores = np.zeros((len(sequences), losses.shape[1]))
        scores[chunk] = sums.numpy()
    return scores


@torch.no_grad()
def token_scores(model: Learner, sequence: np.ndarray) -> np.ndarray:
    """The run's own loss at each token of one sequence, hidden in turn: (n,), what
    ``sentence_scores`` sums."""
    tokens, lengths = probe.pad([sequence])
    losses, _ = model.losses_and_states(each_token_hidden(tokens, lengths))
    return losses[:, 0].double().numpy()


def view_losses(model: Learner, readout: probe.Readout | None = None, vocab_size: int = 0
                ) -> Callable[[MaskedBatch], Tensor]:
    """The losses at each view's one hidden token, (batch) → (V, K): the run's own, and with
    a ``readout`` its cross-entropy of the hidden word. The readout's distribution is mixed
    with a uniform one over the vocabulary at ``READOUT_FLOOR``, so a word it never saw
    costs a finite amount."""
    def losses_at(batch: MaskedBatch) -> Tensor:
        own, states = model.losses_and_states(batch)  # (V, 1), (V, 1, D)
        if readout is None:
            return own.float()
        logits = readout.logits(states[:, 0])  # (V, classes)
        truth = batch.tokens[batch.document, batch.target_positions[:, 0]].cpu()
        index = torch.searchsorted(readout.classes, truth).clamp(max=len(readout.classes) - 1)
        known = readout.classes[index] == truth
        p = torch.softmax(logits, dim=1).gather(1, index[:, None])[:, 0] * known
        read = -torch.log((1 - READOUT_FLOOR) * p + READOUT_FLOOR / vocab_size)
        return torch.stack([own[:, 0].float().cpu(), read], dim=1)
    return losses_at


@torch.no_grad()
def fit_hidden_readout(model: Learner, bins: data.TokenBins, config: RunConfig,
                       device: str = "cpu", seed: int = 0) -> probe.Readout:
    """A linear word readout fitted on what the run holds at the hidden positions of its own
    training text (``losses_and_states`` under its own masks), up to ``READOUT_POSITIONS``
    of them, over the words that recur there (``probe.recurring``)."""
    split = bins.split("train")
    documents = np.random.default_rng(seed).permutation(len(split))
    documents = documents[split.lengths[documents] >= max(config.data.min_tokens, 2)]
    sampler = MaskSampler(config.masking, seed)
    xs, ys, count = [], [], 0
    for start in range(0, len(documents), 32):
        tokens, lengths = split.batch(documents[start:start + 32], config.data.block_size)
        batch = sampler(tokens, lengths).to(device)
        valid = batch.target_valid
        xs.append(model.losses_and_states(batch)[1][valid].float().cpu())
        ys.append(batch.tokens[batch.document[:, None], batch.target_positions][valid].cpu())
        count += int(valid.sum())
        if count >= READOUT_POSITIONS:
            break
    x, y = probe.recurring(torch.cat(xs)[:READOUT_POSITIONS],
                           torch.cat(ys)[:READOUT_POSITIONS])
    return probe.fit_readout(x, y)


class NGrams:
    """Unigram and bigram models of a split's documents, add-k smoothed; a bigram never
    crosses a document's end, and a sentence's first token is scored by the unigram."""

    def __init__(self, split: data.DocumentSplit, vocab_size: int, k: float = NGRAM_K):
        tokens = np.asarray(split.tokens, dtype=np.int64)
        self.vocab_size, self.k = vocab_size, k
        self.unigram = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
        inside = np.ones(len(tokens) - 1, dtype=bool)
        ends = split.offsets[1:-1] - 1  # the last token of each document but the last
        inside[ends[(ends >= 0) & (ends < len(inside))]] = False
        codes = tokens[:-1][inside] * vocab_size + tokens[1:][inside]
        self.codes, self.counts = np.unique(codes, return_counts=True)
        self.first = np.bincount(tokens[:-1][inside], minlength=vocab_size).astype(np.float64)
        self.total = self.unigram.sum()

    def unigram_score(self, sequence: np.ndarray) -> float:
        """−Σ log p(w), in nats."""
        p = (self.unigram[sequence] + self.k) / (self.total + self.k * self.vocab_size)
        return float(-np.log(p).sum())

    def bigram_score(self, sequence: np.ndarray) -> float:
        """−log p(w₁) − Σ log p(wᵢ | wᵢ₋₁), in nats."""
        sequence = np.asarray(sequence, dtype=np.int64)
        codes = sequence[:-1] * self.vocab_size + sequence[1:]
        at = np.searchsorted(self.codes, codes).clip(max=len(self.codes) - 1)
        pair = np.where(self.codes[at] == codes, self.counts[at], 0)
        p = (pair + self.k) / (self.first[sequence[:-1]] + self.k * self.vocab_size)
        return self.unigram_score(sequence[:1]) - float(np.log(p).sum())


def accuracy(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per pair: 1 when the grammatical sentence scores lower, 0.5 for a tie, 0 otherwise."""
    tie = np.isclose(good, bad, **TIE)
    return np.where(tie, 0.5, (good < bad).astype(np.float64))


def by_paradigm(right: np.ndarray, paradigms: list[str]) -> dict[str, float]:
    """Each paradigm's accuracy, in the order the paradigms first occur."""
    names = list(dict.fromkeys(paradigms))
    found = np.asarray(paradigms)
    return {name: round(float(right[found == name].mean()), 4) for name in names}


def overall(paradigms: dict[str, float]) -> float:
    """The mean over paradigms: a large paradigm weighs as much as a small one."""
    return round(float(np.mean(list(paradigms.values()))), 4)


def score_run(run_dir: str | Path, pairs_file: str | Path, checkpoint: str | Path = "last",
              device: str = "cpu", progress: bool = True, readout: bool = True) -> dict:
    """Score a run's checkpoint, its random-init twin and the n-gram models on the pairs;
    write the report into the run folder and return it."""
    run_dir, pairs_file = Path(run_dir), Path(pairs_file)
    pairs = read_pairs(pairs_file)
    model, config, vocab = load_run(run_dir, checkpoint, device)
    bins = data.TokenBins(config.data.dir)
    good = [encode(vocab, p.good) for p in pairs]
    bad = [encode(vocab, p.bad) for p in pairs]
    short = next((i for i, s in enumerate(good + bad) if len(s) < 2), None)
    if short is not None:
        pair = pairs[short % len(pairs)]
        raise PairsError(f"{pairs_file}: the pair {pair.good!r} / {pair.bad!r} has a sentence "
                         "of fewer than 2 tokens: nothing to hide a token in")
    sentences = good + bad
    paradigms = [p.paradigm for p in pairs]
    twin = probe.random_twin(model, config.train.seed + 12345, device)

    def accuracies(scores: np.ndarray) -> dict[str, float]:
        return by_paradigm(accuracy(scores[:len(pairs)], scores[len(pairs):]), paradigms)

    fitted = fit_hidden_readout(model, bins, config, device, config.train.seed) if readout \
        else None
    scores = sentence_scores(view_losses(model, fitted, config.model.vocab_size), sentences,
                             device, progress, "run")
    own = accuracies(scores[:, 0])
    twin_own = accuracies(sentence_scores(view_losses(twin), sentences, device, progress,
                                          "random init")[:, 0])
    ngrams = NGrams(bins.split("train"), config.model.vocab_size)
    unigram = accuracies(np.array([ngrams.unigram_score(s) for s in sentences]))
    length = accuracies(np.array([len(s) for s in sentences], dtype=np.float64))
    bigram = accuracies(np.array([ngrams.bigram_score(s) for s in sentences]))
    read = accuracies(scores[:, 1]) if readout else None
    report = {
        "run_dir": str(run_dir), "checkpoint": model.checkpoint,
        "step": model.checkpoint_step, "objective": config.objective.name,
        "pairs_file": str(pairs_file), "pairs": len(pairs),
        "score": "pseudo-likelihood" if config.objective.name == "mlm" else "energy",
        "overall": overall(own), "paradigms": own,
        "readout_overall": overall(read) if read else None, "readout_paradigms": read,
        "counts": {name: paradigms.count(name) for name in own},
        "baselines": {"random_init": overall(twin_own), "length": overall(length),
                      "unigram": overall(unigram), "bigram": overall(bigram)},
        "baseline_paradigms": {"random_init": twin_own, "length": length, "unigram": unigram,
                               "bigram": bigram},
        "unseen_token_share": round(float(np.mean(np.concatenate(sentences) ==
                                                  data.UNKNOWN_ID)), 4),
    }
    report_path(run_dir, pairs_file, checkpoint).write_text(json.dumps(report, indent=2))
    return report


def report_path(run_dir: Path, pairs_file: Path, checkpoint: str | Path = "last") -> Path:
    """Where a run's report on a pairs file is kept: ``pairs-<file>.json`` for ``last``,
    ``pairs-<file>@<checkpoint>.json`` otherwise."""
    tag = "" if str(checkpoint) == "last" else f"@{checkpoint_path(run_dir, checkpoint).stem}"
    return Path(run_dir) / f"pairs-{Path(pairs_file).stem}{tag}.json"


# --- tables ---------------------------------------------------------------------------------


def run_table(report: dict) -> str:
    """One run's report as a table: each paradigm (and the overall mean over paradigms) with
    the run's own score, its readout score, random init, the shorter sentence and the
    n-grams."""
    rows = []
    base = report["baseline_paradigms"]
    readout = report["readout_paradigms"] or {}
    for name, value in report["paradigms"].items():
        rows.append([name, str(report["counts"][name]), f"{value:.3f}",
                     _fmt(readout.get(name)), *(f"{base[k][name]:.3f}" for k in BASELINES)])
    rows.append(["**overall** (mean over paradigms)", str(report["pairs"]),
                 f"**{report['overall']:.3f}**", _fmt(report["readout_overall"]),
                 *(f"{report['baselines'][k]:.3f}" for k in BASELINES)])
    return markdown_table(["paradigm", "pairs", report["score"], "readout", "random init",
                           "fewer tokens", "unigram", "bigram"], rows)


def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders named: a sweep's folder (one holding ``sweep.json``) stands for its
    runs, variant by variant, seed by seed, as ``python -m tjepa.lab.sweep`` recorded them."""
    found = []
    for path in paths:
        sweep = path / "sweep.json"
        if sweep.is_file():
            found += [path / f"{v['name']}-seed{s}"
                      for v in json.loads(sweep.read_text())["variants"] for s in v["seeds"]]
        else:
            found.append(path)
    return found


def variant_of(run_dir: Path) -> str:
    """A run folder's variant: its name without the ``-seedK`` of a sweep."""
    return re.sub(r"-seed\d+$", "", Path(run_dir).name)


def saved_reports(run_dirs: list[Path], pairs_file: Path, checkpoint: str = "last"
                  ) -> dict[str, list[dict]]:
    """The saved reports of runs on a pairs file, by variant, in the order first met."""
    found: dict[str, list[dict]] = {}
    for run_dir in run_dirs:
        path = report_path(run_dir, pairs_file, checkpoint)
        if not path.is_file():
            raise RunError(f"{run_dir}: no {path.name}; run python -m tjepa.pairs {run_dir} "
                           f"--pairs {pairs_file}")
        found.setdefault(variant_of(run_dir), []).append(json.loads(path.read_text()))
    return found


def variants_table(reports: dict[str, list[dict]]) -> str:
    """Variants side by side, their seeds averaged: each paradigm's accuracy by the run's own
    score (readout score in brackets) and the n-grams', then each variant's random-init twins
    overall. A cell with several seeds reads ``mean ± std`` (the population std over seeds)."""
    first = next(iter(reports.values()))
    names = list(first[0]["paradigms"])
    text_only = ("length", "unigram", "bigram")  # the same for runs on the same text and pairs
    if any({k: r["baselines"][k] for k in text_only} !=
           {k: first[0]["baselines"][k] for k in text_only}
           for runs in reports.values() for r in runs):
        raise RunError("the runs' n-gram baselines differ: they trained on different text or "
                       "scored different pairs; table them apart")

    def cell(values: list[float | None]) -> str:
        if None in values:
            return "—"
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")

    rows = []
    for name in [*names, None]:
        label = "**overall**" if name is None else name
        row = [label, str(first[0]["pairs"] if name is None else first[0]["counts"][name])]
        for runs in reports.values():
            own = cell([r["overall"] if name is None else r["paradigms"][name] for r in runs])
            read = cell([r["readout_overall"] if name is None else
                         (r["readout_paradigms"] or {}).get(name) for r in runs])
            row.append(f"{own} ({read})")
        base = first[0]["baselines"] if name is None else {
            k: v[name] for k, v in first[0]["baseline_paradigms"].items()}
        rows.append([*row, *(f"{base[k]:.3f}" for k in text_only)])
    rows.append(["*random init*, overall", "",
                 *(cell([r["baselines"]["random_init"] for r in runs])
                   for runs in reports.values()), "", "", ""])
    head = ["paradigm", "pairs", *(f"{v} ({reports[v][0]['score']}; readout)"
                                   for v in reports), "fewer tokens", "unigram", "bigram"]
    return markdown_table(head, rows)


def curve_table(run_dirs: list[Path], pairs_file: Path) -> str:
    """Overall accuracy (own score; readout in brackets) at every checkpoint each run kept a
    report for, the steps as rows and the runs as columns."""
    by_run = {}
    for run_dir in run_dirs:
        found = [Path(run_dir) / f"pairs-{pairs_file.stem}.json",
                 *sorted(Path(run_dir).glob(f"pairs-{pairs_file.stem}@*.json"))]
        reports = [json.loads(p.read_text()) for p in found if p.is_file()]
        by_run[Path(run_dir).name] = {r["step"]: r for r in reversed(reports)}  # last wins
        if not by_run[Path(run_dir).name]:
            raise RunError(f"{run_dir}: no pairs-{pairs_file.stem}*.json to draw a curve from")
    steps = sorted({s for found in by_run.values() for s in found})
    rows = [[str(step), *("—" if step not in found else
                          f"{found[step]['overall']:.3f} ({_fmt(found[step]['readout_overall'])})"
                          for found in by_run.values())] for step in steps]
    return markdown_table(["step", *(f"{name}: own (readout)" for name in by_run)], rows)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.pairs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="run_dir",
                        help="run folders, or a sweep's folder for all its runs")
    parser.add_argument("--pairs", required=True, help="BLiMP-format JSON lines")
    parser.add_argument("--checkpoint", default="last",
                        help="last (default), best, or a checkpoint's path (e.g. step-300.pt)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-readout", action="store_true",
                        help="the run's own score only (the readout is fitted per run)")
    parser.add_argument("--saved", action="store_true",
                        help="table the runs' saved reports, their seeds averaged; score nothing")
    parser.add_argument("--curve", action="store_true",
                        help="with --saved: overall accuracy at every saved checkpoint")
    parser.add_argument("--readme", help="with --saved: write the table between this file's "
                                         "markers")
    parser.add_argument("--marker", default="pairs")
    parser.add_argument("--json", action="store_true",
                        help="print the (last) run's report as one JSON object, last")
    args = parser.parse_args(argv)
    if (args.readme or args.curve) and not args.saved:
        parser.error("--readme and --curve table saved reports: add --saved")
    run_dirs, pairs_file = run_folders([Path(r) for r in args.run_dirs]), Path(args.pairs)
    try:
        if args.saved:
            table = (curve_table(run_dirs, pairs_file) if args.curve else
                     variants_table(saved_reports(run_dirs, pairs_file, args.checkpoint)))
            print(table)
            if args.readme:
                write_readme_table(args.readme, args.marker, table,
                                   command_line("tjepa.pairs", argv))
            return 0
        for run_dir in run_dirs:
            report = score_run(run_dir, pairs_file, args.checkpoint, args.device,
                               readout=not args.no_readout)
            print(f"{run_dir} ({Path(report['checkpoint']).name}, step {report['step']}), "
                  f"{report['pairs']} pairs, {report['unseen_token_share']:.1%} of their "
                  "tokens unseen in training:")
            print(run_table(report))
    except (PairsError, ConfigError, data.DataError, RunError) as e:
        print(f"tjepa.pairs: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
