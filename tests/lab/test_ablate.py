"""The anti-collapse ablation: three mechanisms from one command, one row each."""

from __future__ import annotations

import json

from tests.helpers import TINY
from tjepa.config import CONFIG_DIR
from tjepa.lab import ablate


def test_ablation_configs_differ_only_in_the_mechanism():
    texts = {m: (CONFIG_DIR / "ablation" / f"{m}.toml").read_text() for m in ablate.MECHANISMS}
    strip = lambda text, m: text.replace(f'"{m}"', '"?"')
    assert len({strip(t, m) for m, t in texts.items()}) == 1


def test_ablate_trains_and_probes_every_mechanism(tinytales_bins, tmp_path):
    result = ablate.ablate(str(tinytales_bins), steps=3, out=tmp_path, max_documents=100,
                           overrides=[*TINY, "monitor.documents=32"], random_inits=1,
                           progress=False)
    assert [r["mechanism"] for r in result["rows"]] == list(ablate.MECHANISMS)
    for row in result["rows"]:
        assert row["steps"] == 3 and row["seconds_per_step"] > 0 and row["rankme"] > 0
        assert {"name", "kind", "trained", "random_init"} <= set(row["probes"][0])
    table = (tmp_path / "table.md").read_text()
    assert table.strip() == ablate.ablation_table(result)
    assert json.loads((tmp_path / "table.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / "ablation.png").exists()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- ablation:start -->\nold\n<!-- ablation:end -->\nend\n")
    # --saved tables the finished ablation again, training nothing
    assert ablate.main(["--out", str(tmp_path), "--saved", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert table.strip() in text and "old" not in text and text.endswith("end\n")
    assert "| **last.pt (3)** |" not in text and "| last.pt (3) |" in text
