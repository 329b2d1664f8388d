"""The pages: each within its size, every table read from kept records what its command prints,
links that resolve, and one name for the headline."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from tjepa import eval as tjepa_eval
from tjepa import pairs
from tjepa.lab import ablate, shortcuts, sweep

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "docs/lab").glob("*.md"))]
WRITTEN = re.compile(r"<!-- (?P<marker>[\w-]+):start -->\n<!-- written by `(?P<command>[^`]+)` -->"
                     r"\n(?P<table>.*?)<!-- (?P=marker):end -->", re.S)
COMMANDS = {"tjepa.lab.sweep": sweep.main, "tjepa.eval": tjepa_eval.main,
            "tjepa.lab.shortcuts": shortcuts.main, "tjepa.lab.ablate": ablate.main,
            "tjepa.pairs": pairs.main}


def prose(text: str) -> str:
    """A page less its tables, fenced code and HTML comments: what a reader reads as text."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return "\n".join(line for line in text.splitlines()
                     if not line.startswith("|") and not line.startswith("<!--"))


def test_the_pages_fit_their_budgets():
    assert len((ROOT / "README.md").read_bytes()) <= 10_000
    top = sum(len(p.read_bytes()) for p in (ROOT / "docs").glob("*.md"))
    assert top <= 60_000, f"docs/*.md hold {top:,} bytes"
    lab = sum(len(prose(p.read_text()).encode()) for p in (ROOT / "docs/lab").glob("*.md"))
    assert 0 < lab <= 40_000, f"the lab's prose holds {lab:,} bytes"


def tables_from_records() -> list[tuple[str, str, str]]:
    """(page, command, table) for every table written from the records kept in docs/runs, a
    saved sweep or saved evals: what a test can print again without training or data."""
    found = []
    for page in PAGES:
        for match in WRITTEN.finditer(page.read_text()):
            command = match["command"]
            if "docs/runs/" in command and "--saved" in command:
                found.append((str(page.relative_to(ROOT)), command, match["table"]))
    return found


@pytest.mark.parametrize(("page", "command", "table"), tables_from_records(),
                         ids=lambda v: v if "/" in v and " " not in v else None)
def test_every_table_from_kept_records_is_what_its_command_prints(page, command, table,
                                                                  monkeypatch):
    monkeypatch.chdir(ROOT)
    words = shlex.split(command)
    assert words[:2] == ["python", "-m"] and words[2] in COMMANDS, command
    argv = words[3:]
    for flag in ("--readme", "--marker"):  # print the table, write nothing
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert COMMANDS[words[2]](argv) == 0
    assert printed.getvalue().strip() == table.strip(), f"{page}: rerun {command}"


def test_at_least_the_findings_tables_are_checked():
    pages = {page for page, _, _ in tables_from_records()}
    assert {"README.md", "docs/results.md"} <= pages


LINK = re.compile(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]+))?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_pages_resolve(page):
    for target, anchor in LINK.findall(page.read_text()):
        linked = (page.parent / target).resolve() if target else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no #{anchor} in {linked.name}"


RETIRED_NAMES = re.compile(r"semantic gain|discourse gain|semantic_gain|discourse_gain",
                           re.I)


@pytest.mark.parametrize("path", [*PAGES, *sorted((ROOT / "notebooks").glob("0*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_headline_has_one_name(path):
    assert not RETIRED_NAMES.search(path.read_text()), path
