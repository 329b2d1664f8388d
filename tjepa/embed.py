"""Embed texts with a trained run's encoder.

    python -m tjepa.embed RUN_DIR stories.txt [--out stories.npy]

Reads a .txt (stories separated by ``<|endoftext|>`` lines), .jsonl or .parquet file and writes
one mean-pooled embedding per document as a ``.npy`` array. From Python:
``tjepa.embed_texts(run_dir, texts)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tjepa import data
from tjepa.runs import RunError, embed_texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("file")
    parser.add_argument("--out", help="output .npy (default: FILE with .npy)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", default="last",
                        help="last (default), best (lowest validation loss) or a path")
    args = parser.parse_args(argv)
    try:
        texts = data.read_text_file(Path(args.file))
        vectors = embed_texts(args.run_dir, texts, device=args.device,
                              checkpoint=args.checkpoint)
    except (data.DataError, RunError) as e:
        print(f"tjepa.embed: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".npy")
    np.save(out, vectors)
    print(f"wrote {out}: {vectors.shape[0]} embeddings of width {vectors.shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
