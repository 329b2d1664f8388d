"""Anti-collapse at equal compute: EMA vs SIGReg vs VICReg, trained and probed alike.

    python -m tjepa.lab.ablate [--data DIR] [--steps N] [--seeds K] [--json] [--readme FILE]
    python -m tjepa.lab.ablate --out DIR --saved --readme FILE     # table a finished ablation

Trains ``configs/ablation/{ema,sigreg,vicreg}.toml`` (identical but for ``objective.anti_collapse``)
for the same number of steps, evaluates each with the probe suite, and writes ``table.md``,
``table.json`` and ``ablation.png`` to ``--out``. Wall time per step is reported, so equal
compute is visible. ``--readme FILE`` rewrites the table between that file's markers
(``--marker``), so a page shows what the command printed and nothing typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tjepa import plot, probe
from tjepa.config import CONFIG_DIR
from tjepa.eval import evaluate_run
from tjepa.lab.sweep import variant_row
from tjepa.runs import load_config, read_metrics
from tjepa.tables import command_line, markdown_table, write_readme_table
from tjepa.train import train

MECHANISMS = ("ema", "sigreg", "vicreg")
README_MARKER = "ablation"  # the table lies between <!-- ablation:start/end --> in docs/results.md


def ablate(data_dir: str | None = None, steps: int | None = None, seeds: int = 1,
           out: str | Path = "out/ablation", max_documents: int = 1000,
           overrides: list[str] = (), random_inits: int = probe.RANDOM_INITS,
           progress: bool = True, checkpoint: str = "last") -> dict:
    """Train and probe every mechanism for ``seeds`` seeds; returns rows, one per mechanism.
    ``overrides`` (``section.key=value``) apply to all three configs alike."""
    out = Path(out)
    runs = {m: [] for m in MECHANISMS}
    for mechanism in MECHANISMS:
        for seed in range(seeds):
            settings = [*overrides, f"train.seed={seed}"]
            if data_dir:
                settings.append(f"data.dir={json.dumps(str(data_dir))}")
            if steps:
                settings.append(f"train.max_steps={steps}")
            config = load_config(CONFIG_DIR / "ablation" / f"{mechanism}.toml", settings)
            run_dir = out / f"{mechanism}-seed{seed}"
            summary = train(config, run_dir, progress=progress)
            report = evaluate_run(run_dir, max_documents=max_documents,
                                  random_inits=random_inits, progress=progress,
                                  checkpoint=checkpoint)
            metrics = read_metrics(run_dir)
            runs[mechanism].append({
                "seed": seed, "summary": summary, "report": report, "metrics": metrics,
                "seconds_per_step": summary["seconds"] / max(summary["step"], 1),
            })
    rows = [{**_row(mechanism, found), "checkpoint": checkpoint}
            for mechanism, found in runs.items()]
    result = {"rows": rows, "seeds": seeds, "steps": rows[0]["steps"], "checkpoint": checkpoint}
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=2))
    (out / "table.md").write_text(ablation_table(result) + "\n")
    fig = plot.ablation_figure(rows, {m: runs[m][0]["metrics"] for m in MECHANISMS})
    fig.savefig(out / "ablation.png", dpi=110)
    plot.plt.close(fig)
    return result


def _row(mechanism: str, found: list[dict]) -> dict:
    """One mechanism, averaged over seeds (``sweep.variant_row``), with its name and the step
    its runs stopped at."""
    row = variant_row(mechanism, [], found)
    return {**row, "mechanism": mechanism, "probed_step": row["steps"],
            "steps": found[0]["summary"]["step"]}


def ablation_table(result: dict) -> str:
    """Mechanisms as rows: loss, RankMe, alarm, time, and each probe's accuracy (± seeds)."""
    rows = result["rows"]
    probe_names = [p["name"] for p in rows[0]["probes"]]
    spread = result["seeds"] > 1
    head = ["mechanism", "probed", "final loss", "token RankMe", "alarm", "s/step",
            "training gain", *probe_names]
    fmt = lambda v, s: f"{v:.3f}" + (f" ± {s:.3f}" if spread else "")
    table = []
    for row in rows:
        cells = [row["mechanism"], f"{row['checkpoint']}.pt ({row['probed_step']})",
                 f"{row['final_loss']:.4f}", f"{row['rankme']:.1f}",
                 "yes" if row["collapse_alarm"] else "no", f"{row['seconds_per_step']:.3f}",
                 "—" if row["training_gain"] is None else
                 fmt(row["training_gain"], row["training_gain_std"])]
        table.append(cells + [fmt(p["trained"], p["trained_std"]) for p in row["probes"]])
    table.append(["best baseline (random init or a shortcut)", "—", "—", "—", "—", "—", "—",
                  *(f"{p['best_baseline']:.3f}" for p in rows[0]["probes"])])
    return markdown_table(head, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="bins folder (default: the configs' tinytales)")
    parser.add_argument("--steps", type=int, help="steps per run (default: the configs' 400)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default="out/ablation")
    parser.add_argument("--max-documents", type=int, default=1000)
    parser.add_argument("--random-inits", type=int, default=probe.RANDOM_INITS,
                        help="random-init twins per run (with several seeds, one is enough: "
                             "every seed brings its own)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value in all three configs")
    parser.add_argument("--checkpoint", default="last", choices=("last", "best"),
                        help="which checkpoint of each run the probes read")
    parser.add_argument("--saved", action="store_true",
                        help="train nothing: table the ablation already in --out (table.json)")
    parser.add_argument("--readme", help="rewrite the table between this file's markers")
    parser.add_argument("--marker", default=README_MARKER,
                        help="the markers' name: <!-- NAME:start --> … <!-- NAME:end -->")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    saved = Path(args.out) / "table.json"
    if args.saved and not saved.is_file():
        parser.error(f"--saved: no {saved}; run the ablation first")
    result = json.loads(saved.read_text()) if args.saved else ablate(
        args.data, args.steps, args.seeds, args.out, args.max_documents, args.set,
        args.random_inits, checkpoint=args.checkpoint)
    table = ablation_table(result)
    print(table)
    if args.readme:
        write_readme_table(args.readme, args.marker, table,
                           command_line("tjepa.lab.ablate", argv))
    if args.json:
        print(json.dumps({"rows": result["rows"], "seeds": result["seeds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
