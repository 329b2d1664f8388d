"""The GPU evidence run's results: one file a run to carry back, poured into run records.

    python -m tjepa.lab.evidence bundle RUN_DIR OUT.json --variant NAME --config FILE \\
        [--set SECTION.KEY=VALUE ...]
    python -m tjepa.lab.evidence unbundle BUNDLE.json [BUNDLE.json ...] --out docs/runs/gpu

``.ci/gpu_evidence.sh`` trains and probes on a card, where only a few files may come back
and checkpoints are too large to: ``bundle`` gathers what the docs need of a run folder —
its resolved config, its metrics, its ``eval.json`` and every ``pairs-*.json`` — into one
JSON file, with the variant name, the config file and the overrides that trained it.
``unbundle`` writes those back as the records a sweep keeps (``NAME-seedK/`` folders and
``sweep.json``), so ``python -m tjepa.lab.sweep --out DIR --saved`` and
``python -m tjepa.pairs DIR/* --pairs FILE --saved`` table them, and the records test pins
each to its config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tjepa.runs import RunError, load_config, read_metrics


def bundle(run_dir: str | Path, variant: str, config_file: str,
           overrides: list[str] = ()) -> dict:
    """What the docs need of a run folder, as one JSON-ready dict; a probe report the run
    lacks (the run was cut before it) is left out, not faked."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise RunError(f"{run_dir}: not a run folder (no config.toml)")
    found = {"variant": variant, "config_file": config_file, "overrides": list(overrides),
             "seed": load_config(run_dir / "config.toml").train.seed,
             "config_toml": (run_dir / "config.toml").read_text(),
             "metrics": read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else [],
             "reports": {}}
    for path in sorted(run_dir.glob("*.json")):
        if path.name == "eval.json" or path.name.startswith("pairs-"):
            found["reports"][path.name] = json.loads(path.read_text())
    return found


def unbundle(found: dict, out: str | Path) -> Path:
    """Write a bundle as a sweep's records under ``out``: ``NAME-seedK/`` with config.toml,
    metrics.jsonl and the reports, and the variant in ``out/sweep.json``; returns the run
    folder."""
    out = Path(out)
    run_dir = out / f"{found['variant']}-seed{found['seed']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(found["config_toml"])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n"
                                                   for m in found["metrics"]))
    for name, report in found["reports"].items():
        (run_dir / name).write_text(json.dumps(report, indent=2))
    saved = out / "sweep.json"
    variants = json.loads(saved.read_text())["variants"] if saved.is_file() else []
    known = {v["name"]: v for v in variants}
    entry = known.setdefault(found["variant"], {
        "name": found["variant"], "config": found["config_file"],
        "overrides": found["overrides"], "seeds": []})
    if entry["config"] != found["config_file"] or entry["overrides"] != found["overrides"]:
        raise RunError(f"{saved}: {found['variant']} was recorded with another config or "
                       "overrides; give this run another variant name")
    entry["seeds"] = sorted({*entry["seeds"], found["seed"]})
    saved.write_text(json.dumps({"variants": list(known.values())}, indent=2))
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.evidence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    pack = verbs.add_parser("bundle", help="a run folder into one JSON file")
    pack.add_argument("run_dir")
    pack.add_argument("out")
    pack.add_argument("--variant", required=True)
    pack.add_argument("--config", required=True, help="the config file that trained it")
    pack.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="an override it trained with (repeat)")
    unpack = verbs.add_parser("unbundle", help="bundles into a sweep's records")
    unpack.add_argument("bundles", nargs="+")
    unpack.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.verb == "bundle":
            Path(args.out).write_text(json.dumps(bundle(args.run_dir, args.variant,
                                                        args.config, args.set)))
            print(f"{args.run_dir} → {args.out}")
        else:
            for path in args.bundles:
                print(f"{path} → {unbundle(json.loads(Path(path).read_text()), args.out)}")
    except (RunError, OSError, json.JSONDecodeError) as e:
        print(f"tjepa.lab.evidence: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
