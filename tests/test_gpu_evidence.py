"""The GPU evidence run cannot rot: its script runs here on the CPU, small, and writes the
files a card's run would; what it carries fits the device's limit; its bundles pour back
into records the docs' commands table."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tjepa import minimal_pairs, runs
from tjepa.lab import evidence, sweep
from tjepa.runs import RunError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci/gpu_evidence.sh"
CARRY_LIMIT = 64 * 2**20  # what may travel to the card: the working tree and the carried paths


@pytest.fixture(scope="module")
def smoke(tinytales_bins, tmp_path_factory):
    out, work = (tmp_path_factory.mktemp(name) for name in ("out", "work"))
    pairs = work / "pairs.jsonl"
    assert minimal_pairs.main(["--source", "tinytales", "--out", str(pairs),
                               "--per-paradigm", "10"]) == 0
    env = {**os.environ, "OUT": str(out), "RUNS": str(work / "runs"),
           "DATA": str(tinytales_bins), "PAIRS": str(pairs)}
    result = subprocess.run(["bash", str(SCRIPT), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1500)
    return result, out, work


def test_the_smoke_run_runs_every_command_and_writes_the_files_a_card_would(smoke):
    result, out, _ = smoke
    assert result.returncode == 0, (result.stdout[-3000:], (out / "log.txt").read_text()[-3000:])
    assert sorted(p.name for p in out.iterdir()) == ["jepa.json", "log.txt", "mlm.json",
                                                     "table.md"]
    for name, objective in (("jepa", "jepa"), ("mlm", "mlm")):
        found = json.loads((out / f"{name}.json").read_text())
        assert found["variant"] == name and found["config_file"] == "configs/tinystories.toml"
        assert {"eval.json", "pairs-pairs.json"} == set(found["reports"])
        assert found["reports"]["eval.json"]["objective"] == objective
        assert found["reports"]["eval.json"]["training_gain"] is not None
        assert found["metrics"] and found["metrics"][-1]["step"] == 4
    table = (out / "table.md").read_text()
    assert "**training gain**" in table and "| **overall** |" in table
    assert not list(out.rglob("*.pt"))  # no checkpoint comes back


def test_its_bundles_pour_back_into_records_that_the_sweep_tables_and_the_config_pins(smoke,
                                                                                     tmp_path):
    _, out, _ = smoke
    records = tmp_path / "gpu"
    assert evidence.main(["unbundle", str(out / "jepa.json"), str(out / "mlm.json"),
                          "--out", str(records)]) == 0
    assert {v["name"] for v in sweep.saved_variants(records)} == {"jepa", "mlm"}
    assert sweep.main(["--out", str(records), "--saved", "--brief"]) == 0
    for variant in sweep.saved_variants(records):
        saved = runs.load_config(records / f"{variant['name']}-seed0/config.toml")
        config = runs.load_config(ROOT / variant["config"],
                                  [*variant["overrides"], f"data.dir={json.dumps(saved.data.dir)}",
                                   f"model.vocab_size={saved.model.vocab_size}"])
        assert config == saved, variant["name"]
    found = json.loads((out / "jepa.json").read_text()) | {"overrides": ["x.y=1"]}
    with pytest.raises(RunError, match="another config or overrides"):
        evidence.unbundle(found, records)


def test_the_header_names_the_call_and_what_it_carries_fits(tmp_path):
    header = SCRIPT.read_text().split("\nset -u", 1)[0]
    call = re.search(r'run\(command="bash \.ci/gpu_evidence\.sh", carry=(\[[^\]]+\]),\s*#?\s*'
                     r'timeout_s=(\d+)\)', header)
    assert call, "the header names the one device call"
    carried, timeout = json.loads(call[1]), int(call[2])
    budget = int(re.search(r"budget=(\d+) slack=1", SCRIPT.read_text())[1])
    assert budget + 20 <= timeout <= 600  # the caps end inside the call's limit
    assert carried == [".whl", "data/tinystories-gpu", "data/pairs"]
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    size = sum((ROOT / f).stat().st_size for f in tracked if (ROOT / f).is_file())
    for path in carried:  # made here before the call, as the header says (absent: not yet)
        size += sum(f.stat().st_size for f in (ROOT / path).rglob("*") if f.is_file())
    assert size <= CARRY_LIMIT, f"{size / 2**20:.1f} MiB would travel"
