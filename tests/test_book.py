"""The rendered walkthrough: ``python -m tjepa.lab.book --smoke`` builds a page per chapter from
the executed notebooks, and Chromium shows each page's figures.

The book is built once for the module, in smoke mode, from a copy of the notebooks, configs
and docs (so the checkout's ``data/`` and ``out/`` are left alone). The chapters nbval has run
in the same session come with their outputs (``conftest.py``) and are not run again. The
browser test needs Debian's Chromium (``.ci/run`` installs it) and skips, saying so, without it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tjepa.lab.book import build_book, inline_markdown, page_exporter

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
# images that loaded and decoded: a broken or empty source has no natural width
SHOWN_FIGURES = ("() => [...document.querySelectorAll('img')]"
                 ".filter(i => i.complete && i.naturalWidth > 0).length")


@pytest.fixture(scope="module")
def book(tmp_path_factory, executed_notebooks):
    checkout = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "notebooks", checkout / "notebooks",
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "configs", checkout / "configs")
    shutil.copytree(ROOT / "docs", checkout / "docs")  # chapter 07 reads the results' tables
    out = checkout / "out" / "book"
    # the chapters nbval ran in this session are not run again (conftest.py)
    chapters = build_book(checkout / "notebooks", out, smoke=True, timeout=600, progress=False,
                          executed=executed_notebooks)
    return out, chapters


def test_summaries_keep_inline_markdown_and_escape_the_rest():
    assert (inline_markdown("A *view* of `x < y` is **this**")
            == "A <em>view</em> of <code>x &lt; y</code> is <strong>this</strong>")


def test_book_has_a_page_per_chapter_linked_from_the_index(book):
    out, chapters = book
    assert [c.page for c in chapters] == [f"{p.stem}.html" for p in
                                          sorted((ROOT / "notebooks").glob("0*.ipynb"))]
    index = (out / "index.html").read_text()
    for chapter in chapters:
        page = (out / chapter.page).read_text()
        assert f'href="{chapter.page}"' in index
        assert chapter.title.startswith(chapter.page[:2]), chapter.title  # "01 · Data: …"
        assert 'href="index.html"' in page
        # figures are inlined: the pages open from disk with nothing from the network
        assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) == chapter.figures
    # every chapter draws at least one figure but 03, which prints shapes and checks sums
    assert all(c.figures > 0 for c in chapters if not c.page.startswith("03"))
    assert all((out / c.source.name).exists() for c in chapters)  # the executed notebooks


def test_every_chapter_page_has_its_exercises_with_folded_solutions(book):
    out, chapters = book
    assert len(chapters) == 7
    index = (out / "index.html").read_text()
    for chapter in chapters:
        page = (out / chapter.page).read_text()
        assert chapter.solutions >= 2, chapter.page
        assert f"{chapter.solutions} exercises" in index
        assert page.count('id="Exercises"') == 1, chapter.page
        folded = re.findall(r'<details class="tjepa-solution"><summary>', page)
        assert len(folded) == chapter.solutions, chapter.page
        # a log line on stderr reads as output, not as an error box
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page, chapter.page


def test_a_page_folds_solutions_and_shows_log_lines_as_plain_output():
    import nbformat.v4 as v4
    from nbclient import NotebookClient

    notebook = v4.new_notebook(cells=[
        v4.new_markdown_cell("# 00 · A chapter"),
        v4.new_code_cell("import sys\nprint('829 parameters on cpu', file=sys.stderr)"),
        v4.new_code_cell("answer = 6 * 7\nassert answer == 42", metadata={"tags": ["solution"]}),
        v4.new_code_cell("print('not an answer')")])
    NotebookClient(notebook, kernel_name="python3").execute()
    page, _ = page_exporter().from_notebook_node(notebook)
    # the log line is plain text output, not the stderr box that reads as an error
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page
    assert re.search(r'data-mime-type="text/plain"[^>]*>\s*<pre>829 parameters on cpu', page)
    folded = re.findall(r'<details class="tjepa-solution">(.*?)</details>', page, re.S)
    assert len(folded) == 1 and "answer" in folded[0] and "not an answer" not in folded[0]


def test_a_chapter_handed_over_executed_is_not_run_again_and_keeps_its_outputs(tmp_path):
    import nbformat
    import nbformat.v4 as v4

    source = v4.new_notebook(cells=[v4.new_markdown_cell("# 01 · Handed over"),
                                    v4.new_code_cell("raise SystemExit('ran again')")])
    nbformat.write(source, tmp_path / "01_handed.ipynb")
    ran = v4.new_notebook(cells=[v4.new_markdown_cell("# 01 · Handed over"),
                                 v4.new_code_cell("print('from nbval')", execution_count=1,
                                                  outputs=[v4.new_output(
                                                      "stream", name="stdout",
                                                      text="from nbval\n")])])
    out = tmp_path / "book"
    chapters = build_book(tmp_path, out, smoke=True, progress=False,
                          executed={"01_handed.ipynb": (ran, 12.5)})
    assert [c.seconds for c in chapters] == [12.5]
    assert "from nbval" in (out / "01_handed.html").read_text()
    assert "ran in 12 s" in (out / "index.html").read_text()


@pytest.fixture
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM}: apt-get install chromium "
                    "(.ci/run does) to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install playwright (the dev extra) to run it")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def shown_figures(browser, url: str, screenshot: Path | None = None) -> int:
    """How many images the page at ``url`` shows once loaded."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(url, wait_until="load")
        if screenshot:
            page.screenshot(path=str(screenshot))
        return page.evaluate(SHOWN_FIGURES)
    finally:
        page.close()


@pytest.mark.browser
def test_chromium_shows_every_chapters_figures(book, chromium, tmp_path):
    out, chapters = book
    page = chromium.new_page()
    page.goto((out / "index.html").as_uri())
    links = page.eval_on_selector_all("ol a", "links => links.map(a => a.href)")
    page.close()
    assert links == [(out / c.page).as_uri() for c in chapters]
    for chapter, link in zip(chapters, links, strict=True):
        shown = shown_figures(chromium, link, tmp_path / f"{chapter.source.stem}.png")
        assert shown == chapter.figures, f"{chapter.page}: {shown} of {chapter.figures} shown"


@pytest.mark.browser
def test_browser_figure_count_misses_a_broken_image(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    assert shown_figures(chromium, page.as_uri()) == 0
