"""What the text-only shortcuts read on each probe of a corpus, with no model trained.

    python -m tjepa.lab.shortcuts data/tinytales data/tinystories-shared \
        [--readme FILE --marker NAME]

For each bins folder, every document probe's accuracy for ``length``, ``bag_of_words`` and
``positional_words`` (``probe.TEXT_SHORTCUTS``), on the texts and with the readout that
``python -m tjepa.eval`` uses (``probe.shortcut_scores``). A probe that one of them passes
tests that shortcut before it tests an encoder: only a margin over it counts. Seconds per
corpus.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tjepa import data, probe
from tjepa.tables import command_line, markdown_table, write_readme_table

DEFAULT_BLOCK_SIZE = 192  # the block size of configs/default.toml and tinystories_cpu.toml


def shortcuts_table(bins_dirs: list[str | Path], block_size: int = DEFAULT_BLOCK_SIZE,
                    seed: int = 0, max_documents: int = probe.MAX_PROBE_DOCUMENTS,
                    progress: bool = True) -> str:
    """A row per probe, a column per corpus and shortcut; a probe a corpus lacks is a dash."""
    scores = {Path(d).name: probe.shortcut_scores(data.TokenBins(d), block_size, seed,
                                                  max_documents, progress)
              for d in bins_dirs}
    names = list(dict.fromkeys(n for found in scores.values() for n in found))
    kinds = {n: found[n]["kind"] for found in scores.values() for n in found}
    head = ["probe", *(f"{corpus}: {shortcut.replace('_', ' ')}" for corpus in scores
                       for shortcut in probe.TEXT_SHORTCUTS)]
    rows = [[f"{n} ({kinds[n]})",
             *("—" if n not in found else f"{found[n]['baselines'][shortcut]:.3f}"
               for found in scores.values() for shortcut in probe.TEXT_SHORTCUTS)]
            for n in names]
    return markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.shortcuts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bins_dirs", nargs="+", metavar="bins_dir")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    parser.add_argument("--seed", type=int, default=0, help="the probes' seed (a run's seed)")
    parser.add_argument("--max-documents", type=int, default=probe.MAX_PROBE_DOCUMENTS)
    parser.add_argument("--readme", help="write the table between this file's markers")
    parser.add_argument("--marker", default="shortcuts",
                        help="the markers' name: <!-- NAME:start --> … <!-- NAME:end -->")
    args = parser.parse_args(argv)
    try:
        table = shortcuts_table(args.bins_dirs, args.block_size, args.seed, args.max_documents)
    except data.DataError as e:
        print(f"tjepa.lab.shortcuts: error: {e}", file=sys.stderr)
        return 1
    print(table)
    if args.readme:
        write_readme_table(args.readme, args.marker, table,
                           command_line("tjepa.lab.shortcuts", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
