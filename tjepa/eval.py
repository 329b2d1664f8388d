"""Evaluate a run: the probe suite on its frozen encoder, against random init and a bag of words.

    python -m tjepa.eval out/default-20260101-120000 [--data DIR] [--json]
    python -m tjepa.eval RUN RUN ... [--saved] [--readme README.md]

Writes ``eval.json`` and ``eval.png`` into each run folder; with ``--json`` the last line
printed is ``{"probes": [...], "rankme": ...}`` (of the last run). Given several runs it also
prints them side by side (``runs_table``); ``--saved`` reads their ``eval.json`` instead of
probing again, and ``--readme`` writes the table between the README's ``runs`` markers, so the
README shows what the command printed and nothing typed by hand. To take a trained encoder to
your own task, see ``tjepa.runs.load_run`` and ``tjepa.embed_texts``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tjepa import data, plot, probe
from tjepa.config import ConfigError
from tjepa.lab.report import command_line, markdown_table, write_readme_table
from tjepa.runs import RunError, load_run, read_metrics


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "cpu",
                 max_documents: int = probe.MAX_PROBE_DOCUMENTS,
                 random_inits: int = probe.RANDOM_INITS, progress: bool = True) -> dict:
    """Run the probe suite on a run; writes eval.json and eval.png; returns the report."""
    run_dir = Path(run_dir)
    model, config, _ = load_run(run_dir, device=device)
    bins = data.TokenBins(data_dir or config.data.dir)
    results = probe.run_probes(model, bins, config.data.block_size, config.masking,
                               seed=config.train.seed, device=device,
                               max_documents=max_documents, random_inits=random_inits,
                               progress=progress)
    measured = [r for r in read_metrics(run_dir) if "rankme" in r]
    report = {"run_dir": str(run_dir), "probes": probe.as_dicts(results),
              "rankme": measured[-1]["rankme"] if measured else None}
    semantic = [r for r in results if r.kind == "semantic"]
    report["semantic_gain"] = round(float(np.mean([r.trained - r.random_init
                                                   for r in semantic])), 4)
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    fig = plot.probe_figure(results)
    fig.savefig(run_dir / "eval.png", dpi=110)
    plot.plt.close(fig)
    return report


def probe_table(results: list[probe.ProbeResult]) -> str:
    """One run's probe results as a Markdown table."""
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    return markdown_table(
        ["probe", "kind", "trained", "random init", "bag of embeddings", "chance"],
        ([r.name, r.kind, fmt(r.trained), fmt(r.random_init), fmt(r.bag_of_embeddings),
          fmt(r.chance)] for r in results))


KIND_ORDER = ("semantic", "nonlinear", "lexical", "information")


def runs_table(run_dirs: list[str | Path]) -> str:
    """Runs side by side from their ``eval.json`` and metrics: every probe (semantic first,
    then their mean gain), the final RankMe, the collapse alarm, and the loss from the first to
    the last log; the last column holds each run's random-init baseline."""
    run_dirs = [Path(r) for r in run_dirs]
    reports = []
    for run_dir in run_dirs:
        if not (run_dir / "eval.json").is_file():
            raise RunError(f"{run_dir}: no eval.json; run python -m tjepa.eval {run_dir}")
        reports.append(json.loads((run_dir / "eval.json").read_text()))
    probes = [{p["name"]: p for p in r["probes"]} for r in reports]
    mismatched = [str(d) for d, found in zip(run_dirs, probes, strict=True)
                  if set(found) != set(probes[0])]
    if mismatched:
        raise RunError(f"{', '.join(mismatched)}: probed with another suite than "
                            f"{run_dirs[0]}; evaluate them again")
    rows = []
    for kind in KIND_ORDER:
        for name in [n for n, p in probes[0].items() if p["kind"] == kind]:
            rows.append([f"{name} ({kind})", *(f"{found[name]['trained']:.3f}" for found in probes),
                         " / ".join(f"{found[name]['random_init']:.3f}" for found in probes)])
        if kind == "semantic":
            rows.append(["**semantic gain**", *(f"**{r['semantic_gain']:+.3f}**" for r in reports),
                         ""])
    metrics = [read_metrics(d) for d in run_dirs]
    rows += [
        ["token RankMe", *("—" if r["rankme"] is None else f"{r['rankme']:.0f}"
                           for r in reports), ""],
        ["collapse alarm", *("yes" if any(m.get("collapse_alarm") for m in logged) else "no"
                             for logged in metrics), ""],
        ["loss, first → last log", *(f"{logged[0]['loss']:.3f} → {logged[-1]['loss']:.3f}"
                                     if logged else "—" for logged in metrics), ""],
    ]
    return markdown_table(["probe", *(d.name for d in run_dirs), "random init (each run)"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="run_dir")
    parser.add_argument("--data", help="bins folder (default: the run's data.dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-documents", type=int, default=probe.MAX_PROBE_DOCUMENTS,
                        help="documents per split for the probes")
    parser.add_argument("--random-inits", type=int, default=probe.RANDOM_INITS,
                        help="random-init twins whose mean is the baseline")
    parser.add_argument("--saved", action="store_true",
                        help="with several runs: table their saved eval.json, probe nothing")
    parser.add_argument("--readme", help="with several runs: write their table between this "
                                         "file's <!-- runs:start/end --> markers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tabled = len(args.run_dirs) > 1 or args.saved
    if args.readme and not tabled:
        parser.error("--readme writes the table of several runs (or of --saved ones)")
    try:
        for run_dir in [] if args.saved else args.run_dirs:
            report = evaluate_run(run_dir, args.data, args.device, args.max_documents,
                              args.random_inits)
            print(f"{run_dir}:")
            print(probe_table([probe.ProbeResult(**r) for r in report["probes"]]))
            print(f"mean gain over random init on semantic probes: "
                  f"{report['semantic_gain']:+.3f}; final RankMe {report['rankme']}")
        table = runs_table(args.run_dirs) if tabled else None
    except (ConfigError, data.DataError, RunError) as e:
        print(f"tjepa.eval: error: {e}", file=sys.stderr)
        return 1
    if table:
        print(table)
        if args.readme:
            write_readme_table(args.readme, "runs", table, command_line("tjepa.eval", argv))
    if args.json and not args.saved:
        print(json.dumps({k: report[k] for k in ("probes", "rankme", "semantic_gain")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
