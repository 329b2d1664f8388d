"""The shortcuts table: what the text-only shortcuts read on a corpus's probes."""

from __future__ import annotations

from tjepa.lab import shortcuts


def test_the_shortcuts_table_shows_a_positional_bag_of_words_reading_swapped_halves(
        tinytales_bins, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- shortcuts:start -->\n<!-- shortcuts:end -->\n")
    assert shortcuts.main([str(tinytales_bins), "--max-documents", "200", "--readme",
                           str(page)]) == 0
    text = page.read_text()
    assert "tjepa.lab.shortcuts" in text  # the command named above the table
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:]
            for line in text.splitlines() if line.startswith("| ")}
    head = rows.pop("probe")
    assert [h.split(": ")[1].strip(" |") for h in head] == [
        "length", "bag of words", "positional words"]
    length, bag, positional = (float(v.strip(" |")) for v in rows["order:halves (story)"])
    # both versions hold the same tokens: only where they sit tells them apart
    assert abs(length - 0.5) < 0.15 and abs(bag - 0.5) < 0.15 and positional > 0.9
    assert shortcuts.main([str(tmp_path / "nowhere")]) == 1
