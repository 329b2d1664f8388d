"""The walkthrough's pairs stay in sync, import the package, and carry no outputs.

nbval runs the notebooks themselves (``pytest`` collects ``notebooks/*.ipynb``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("0*.py"))


def test_there_are_seven_chapters_each_a_pair():
    assert [p.stem[:2] for p in SOURCES] == ["01", "02", "03", "04", "05", "06", "07"]
    for source in SOURCES:
        assert source.with_suffix(".ipynb").exists(), source


def test_notebook_pairs_regenerate_to_what_is_committed(tmp_path):
    # --sync trusts timestamps, which a checkout scrambles: regenerate and compare instead.
    copy = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    sources = sorted(str(p) for p in copy.glob("0*.py"))
    result = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--update",
                             *sources], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for source in SOURCES:
        notebook = source.with_suffix(".ipynb").name
        assert (copy / notebook).read_text() == (ROOT / "notebooks" / notebook).read_text(), (
            f"{notebook} is out of date: jupytext --to ipynb --update notebooks/0*.py")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_imports_tjepa_and_carries_no_outputs(source):
    assert "from tjepa" in source.read_text()
    notebook = json.loads(source.with_suffix(".ipynb").read_text())
    assert "widgets" not in notebook["metadata"]
    parameters = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(parameters) == 1 and "TJEPA_SMOKE" in "".join(parameters[0]["source"])
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_chapter_teaches_goals_prerequisites_references_and_checked_exercises(source):
    notebook = json.loads(source.with_suffix(".ipynb").read_text())
    prose = " ".join(" ".join("".join(c["source"]) for c in notebook["cells"]
                              if c["cell_type"] == "markdown").split())  # lines rewrapped
    for heading in ("**You will learn**", "**Before you start:**", "## Summary",
                    "## References", "## Exercises"):
        assert heading in prose, f"{source.name} has no {heading}"
    solutions = [c for c in notebook["cells"] if c["cell_type"] == "code"
                 and "solution" in c["metadata"].get("tags", [])]
    assert len(solutions) >= 2, f"{source.name}: {len(solutions)} exercises"
    for cell in solutions:  # each solution checks itself
        assert "assert " in "".join(cell["source"]), "".join(cell["source"])[:80]
