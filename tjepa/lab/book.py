"""The walkthrough as a book: every notebook executed, with its figures, as static HTML pages.

    python -m tjepa.lab.book [--smoke] [--notebooks notebooks] [--out out/book]

Each chapter (``notebooks/0*.ipynb``) is run top to bottom in a fresh kernel (nbclient, as
``jupyter nbconvert --execute`` does), in its own folder, so its relative paths (``../data``,
``../configs``, ``../out``) mean what they mean in JupyterLab. nbconvert's HTML exporter
writes the page with every figure inlined, so the folder opens from disk with nothing from the
network; ``index.html`` lists the chapters and each page links to its neighbours. The
executed notebooks are saved beside their pages.

``--smoke`` runs the notebooks as the tests do (``TJEPA_SMOKE=1``: small data, few steps, a
few minutes on a CPU, nothing from the network). Without it, chapter 05 downloads TinyStories
(once) and trains the real-text config: on a CPU that is the longest chapter by far (its first
cell says how long).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nbformat
from jinja2 import DictLoader
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter
from tqdm import tqdm

TITLE = "tjepa · the walkthrough"
SOLUTION_TAG = "solution"  # a code cell that answers an exercise: folded on the page
# JupyterLab's page, with two changes: a solution cell sits folded in a <details> block, so the
# reader tries the exercise first; and text on stderr (the training loop's log lines) shows as
# plain output, not in the red box that reads as an error (errors keep theirs).
PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block codecell %}
{%- if '""" + SOLUTION_TAG + """' in cell.metadata.get('tags', []) -%}
<details class="tjepa-solution"><summary>Solution (try the exercise first)</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock codecell %}
{% block stream_stderr -%}
{{ self.stream_stdout() }}
{%- endblock stream_stderr %}
"""


@dataclass
class Chapter:
    """One built page: where it came from, what it is called, how long it took to run."""

    source: Path
    page: str  # the HTML file's name inside the book's folder
    title: str
    summary: str
    seconds: float
    figures: int  # image outputs (figures) the executed notebook holds
    solutions: int  # code cells tagged ``solution``: the exercises' checked answers


class BookError(RuntimeError):
    """A chapter failed to run; the message names it and the cell's error."""


def chapter_title(notebook: nbformat.NotebookNode) -> tuple[str, str]:
    """The first Markdown cell's heading and the first paragraph under it."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.strip().splitlines()
        if not lines or not lines[0].startswith("#"):
            continue
        title = lines[0].lstrip("#").strip()
        paragraph = []
        for line in lines[1:]:
            if line.strip():
                paragraph.append(line.strip())
            elif paragraph:
                break
        return title, " ".join(paragraph)
    return "", ""


def count_figures(notebook: nbformat.NotebookNode) -> int:
    """Image outputs in an executed notebook (each figure is one ``image/png`` output)."""
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", [])
               if any(kind.startswith("image/") for kind in output.get("data", {})))


def count_solutions(notebook: nbformat.NotebookNode) -> int:
    """Code cells tagged ``solution``: one per exercise, each checking itself with an assert."""
    return sum(1 for cell in notebook.cells if cell.cell_type == "code"
               and SOLUTION_TAG in cell.get("metadata", {}).get("tags", []))


def page_exporter() -> HTMLExporter:
    """nbconvert's JupyterLab page with the book's changes (``PAGE_TEMPLATE``)."""
    return HTMLExporter(extra_loaders=[DictLoader({"tjepa_book.html.j2": PAGE_TEMPLATE})],
                        template_file="tjepa_book.html.j2")


def inline_markdown(text: str) -> str:
    """Escape a summary and keep its inline code, bold and italics: the Markdown it needs."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


NAV_STYLE = ("font: 15px/1.5 system-ui, sans-serif; padding: 8px 16px; "
             "border-bottom: 1px solid #ddd; background: #fafafa")


def _navigation(chapters: list[Chapter], index: int) -> str:
    previous = chapters[index - 1] if index > 0 else None
    following = chapters[index + 1] if index + 1 < len(chapters) else None
    links = [f'<a href="index.html">{html.escape(TITLE)}</a>']
    if previous:
        links.append(f'<a rel="prev" href="{previous.page}">← {html.escape(previous.title)}</a>')
    if following:
        links.append(f'<a rel="next" href="{following.page}">{html.escape(following.title)} →</a>')
    return f'<nav class="tjepa-book" style="{NAV_STYLE}">{" · ".join(links)}</nav>'


def _index_page(chapters: list[Chapter], smoke: bool) -> str:
    mode = ("smoke mode (<code>TJEPA_SMOKE=1</code>: small data, few steps)" if smoke
            else "full mode")
    items = "\n".join(
        f'<li><a href="{c.page}">{html.escape(c.title)}</a><br>'
        f'{inline_markdown(c.summary)}<br><small>ran in {c.seconds:.0f} s · '
        f'{c.figures} figure{"s" if c.figures != 1 else ""} · '
        f'{c.solutions} exercise{"s" if c.solutions != 1 else ""}</small></li>'
        for c in chapters)
    built = time.strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(TITLE)}</title>
<style>body {{ font: 16px/1.6 system-ui, sans-serif; max-width: 46em; margin: 2em auto;
padding: 0 1em; }} li {{ margin-bottom: 1em; }}</style></head>
<body>
<h1>{html.escape(TITLE)}</h1>
<p>A text JEPA built up chapter by chapter: data, UL2 masking, the model, collapse, training,
evaluation, and the JEPA against the masked LM. Read them in order: each chapter says at its
top what it teaches and what it needs first, and ends with exercises whose solutions are
folded. Every page below is a notebook from <code>notebooks/</code>, executed by
<code>python -m tjepa.lab.book</code> in {mode} on {built}.</p>
<ol>
{items}
</ol>
</body></html>
"""


def run_chapter(source: Path, timeout: int) -> nbformat.NotebookNode:
    """Execute one notebook in a fresh kernel, in its own folder; raise BookError on failure."""
    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}})
    try:
        client.execute()
    except CellExecutionError as error:
        raise BookError(f"{source.name} failed:\n{error}") from None
    return notebook


def build_book(notebooks: str | Path, out: str | Path, smoke: bool = False,
               timeout: int = 3600, progress: bool = True,
               executed: Mapping[str, tuple[nbformat.NotebookNode, float]] | None = None
               ) -> list[Chapter]:
    """Run every ``0*.ipynb`` in ``notebooks`` and write its page (and the executed notebook)
    into ``out``, then ``index.html``. Returns the chapters in order. ``executed`` maps a
    notebook's file name to that notebook already executed and the seconds it took (the
    tests hand over what nbval ran): those chapters are not run again."""
    notebooks, out = Path(notebooks), Path(out)
    sources = sorted(notebooks.glob("0*.ipynb"))
    if not sources:
        raise BookError(f"no notebooks (0*.ipynb) in {notebooks}: run this from the checkout's "
                        "root or pass --notebooks")
    out.mkdir(parents=True, exist_ok=True)
    # the kernels inherit the environment: smoke mode is the notebooks' parameters cell's switch
    saved = os.environ.get("TJEPA_SMOKE")
    os.environ["TJEPA_SMOKE"] = "1" if smoke else "0"
    done = executed or {}
    executed = []
    try:
        for source in tqdm(sources, desc="book", unit="chapter", disable=not progress):
            start = time.perf_counter()
            notebook, seconds = done.get(source.name) or (run_chapter(source, timeout), None)
            title, summary = chapter_title(notebook)
            seconds = time.perf_counter() - start if seconds is None else seconds
            executed.append((notebook, Chapter(source, f"{source.stem}.html", title or source.stem,
                                               summary, seconds, count_figures(notebook),
                                               count_solutions(notebook))))
    finally:
        if saved is None:
            os.environ.pop("TJEPA_SMOKE", None)
        else:
            os.environ["TJEPA_SMOKE"] = saved
    chapters = [chapter for _, chapter in executed]
    exporter = page_exporter()
    for index, (notebook, chapter) in enumerate(executed):
        body, _ = exporter.from_notebook_node(notebook)
        navigation = _navigation(chapters, index)
        body = re.sub(r"(<body[^>]*>)", lambda m, nav=navigation: m.group(1) + nav, body,
                      count=1)
        (out / chapter.page).write_text(body, encoding="utf-8")
        nbformat.write(notebook, out / chapter.source.name)
    (out / "index.html").write_text(_index_page(chapters, smoke), encoding="utf-8")
    return chapters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tjepa.lab.book",
        description="Execute the walkthrough's notebooks and write them as static HTML pages.")
    parser.add_argument("--notebooks", default="notebooks", help="folder of 0*.ipynb")
    parser.add_argument("--out", default="out/book", help="folder for the pages")
    parser.add_argument("--smoke", action="store_true",
                        help="small data and few steps, as the tests run them")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell at most")
    args = parser.parse_args(argv)
    try:
        chapters = build_book(args.notebooks, args.out, smoke=args.smoke, timeout=args.timeout)
    except BookError as error:
        raise SystemExit(str(error)) from None
    for chapter in chapters:
        print(f"{chapter.page}: {chapter.title} ({chapter.figures} figures, "
              f"{chapter.seconds:.0f} s)")
    print(f"open {Path(args.out) / 'index.html'}")


if __name__ == "__main__":
    main()
