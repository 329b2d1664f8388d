"""What nbval executes is kept for the book's test, so a test session runs each chapter once.

nbval (``pytest`` collects ``notebooks/*.ipynb`` first: see ``testpaths``) runs every code cell
of a chapter in one kernel. Each passing cell's outputs are copied into a copy of its notebook;
a chapter whose every code cell passed is handed to ``tests/test_book.py`` through the
``executed_notebooks`` fixture, which builds its pages from it instead of running the chapter
again. A chapter nbval did not run, or that failed, is not handed over: the book's test runs it
itself (as it does when only ``tests/`` is collected).
"""

from __future__ import annotations

import copy

import nbformat
import pytest

EXECUTED = pytest.StashKey[dict]()


@pytest.hookimpl(tryfirst=True)  # a firstresult hook: this one returns None, the report comes after
def pytest_runtest_makereport(item, call):
    # nbval's cell items keep what the kernel sent back in ``test_outputs`` and their notebook
    # in ``parent.nb``; any other item, or an nbval without them, leaves the book to run itself
    outputs, notebook = getattr(item, "test_outputs", None), getattr(item.parent, "nb", None)
    if call.when != "call" or outputs is None or notebook is None:
        return
    chapters = item.config.stash.setdefault(EXECUTED, {})
    name = item.parent.path.name
    record = chapters.setdefault(name, {"notebook": copy.deepcopy(notebook), "passed": set(),
                                        "seconds": 0.0})
    index = next(i for i, cell in enumerate(notebook.cells) if cell is item.cell)
    if call.excinfo is None:
        cell = record["notebook"].cells[index]
        cell.outputs = [nbformat.from_dict(dict(out)) for out in outputs]
        cell.execution_count = len(record["passed"]) + 1
        record["passed"].add(index)
    record["seconds"] += call.duration


@pytest.fixture(scope="session")
def executed_notebooks(request) -> dict[str, tuple[nbformat.NotebookNode, float]]:
    """File name → (the notebook with nbval's outputs, seconds) for each chapter whose every
    code cell passed under nbval in this session."""
    chapters = request.config.stash.get(EXECUTED, {})
    return {name: (record["notebook"], record["seconds"]) for name, record in chapters.items()
            if record["passed"] == {i for i, cell in enumerate(record["notebook"].cells)
                                    if cell.cell_type == "code"}}
