"""Markdown tables of results, and the README blocks they are written into.

Every table of measurements the docs show — the runs (``tjepa.eval``, ``tjepa.lab.sweep``),
the ablation (``tjepa.lab.ablate``), the benchmarks (``tjepa.lab.bench table``) — is written by
the command that measured or gathered it, between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``, with that command named above the table: nothing typed by hand.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: the header, its rule, one line per row of cells ("" for none)."""
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("|" + "|".join(f" {cell} " if cell else " " for cell in line) + "|"
                     for line in lines)


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How ``python -m module`` was called: ``argv``, or the process's arguments when None."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", module, *(shlex.quote(a) for a in args)])


def write_readme_table(readme: str | Path, marker: str, table: str, command: str) -> None:
    """Replace what lies between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->`` in
    ``readme`` with ``table``, saying which command wrote it."""
    readme = Path(readme)
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme}: no {start} … {end} markers to write between")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n<!-- written by `{command}` -->\n{table}\n{end}{after}")
