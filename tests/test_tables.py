"""README tables: Markdown from cells, written between markers with the command that made them."""

from __future__ import annotations

import pytest

from tjepa import tables


def test_markdown_table_has_a_header_a_rule_and_a_line_per_row():
    table = tables.markdown_table(["a", "b"], [["1", "2"], ["3", ""]])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 2 |", "| 3 | |"]


def test_readme_table_replaces_only_its_own_block_and_refuses_a_readme_without_markers(
        tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- x:start -->\nold x\n<!-- x:end -->\n"
                      "<!-- y:start -->\nold y\n<!-- y:end -->\nend\n")
    tables.write_readme_table(readme, "x", "| new |", "python -m tjepa.lab.bench table f")
    assert readme.read_text() == (
        "top\n<!-- x:start -->\n<!-- written by `python -m tjepa.lab.bench table f` -->\n"
        "| new |\n<!-- x:end -->\n<!-- y:start -->\nold y\n<!-- y:end -->\nend\n")
    with pytest.raises(SystemExit, match="no <!-- z:start -->"):
        tables.write_readme_table(readme, "z", "| new |", "python -m tjepa.lab.bench table f")


def test_command_line_names_the_module_and_its_arguments():
    assert tables.command_line("tjepa.eval", ["a", "--saved"]) == "python -m tjepa.eval a --saved"
