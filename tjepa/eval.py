"""Evaluate a run: the probe suite on its frozen encoder, against random init and shortcuts.

    python -m tjepa.eval out/default-20260101-120000 [--data DIR] [--json]
    python -m tjepa.eval RUN RUN ... [--saved] [--readme docs/results.md --marker NAME]
    python -m tjepa.eval RUN ... --rescore-shortcuts   # saved reports, the shortcuts anew
    python -m tjepa.eval RUN ... --refresh             # saved reports, the headline anew

Writes ``eval.json`` and ``eval.png`` into each run folder; with ``--json`` the last line
printed is ``{"probes": [...], "rankme": ..., "training_gain": ...}`` (of the last run); every
probe carries ``name``, ``kind``, ``trained``, ``random_init``, its shortcut ``baselines`` and
``best_baseline``. ``--checkpoint`` picks ``last`` (the default), ``best`` or a path. Given
several runs it also prints them side by side (``runs_table``); ``--saved`` reads their
``eval.json`` instead of probing again, and ``--readme FILE --marker NAME`` writes the table
between that file's markers, so a page shows what the command printed and nothing typed by
hand. To take a trained encoder to your own task, see ``tjepa.runs.load_run`` and
``tjepa.embed_texts``.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

from tjepa import data, plot, probe, probe_texts
from tjepa.config import ConfigError
from tjepa.runs import RunError, load_config, load_run, read_metrics
from tjepa.tables import command_line, markdown_table, write_readme_table


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "cpu",
                 max_documents: int = probe.MAX_PROBE_DOCUMENTS,
                 random_inits: int = probe.RANDOM_INITS, progress: bool = True,
                 checkpoint: str | Path = "last", token_probes: bool = True,
                 cache: bool = True) -> dict:
    """Run the probe suite on a run's ``checkpoint`` (``last``, ``best`` or a path); writes
    eval.json and eval.png into the run folder; returns the report. ``token_probes=False``
    runs the document probes only; ``cache=False`` scores the random-init twins and the
    text-only shortcuts again instead of reading them from the bins folder
    (``probe.run_probes``, ``tjepa.probe_cache``)."""
    run_dir = Path(run_dir)
    model, config, vocab = load_run(run_dir, checkpoint, device)
    bins = data.TokenBins(data_dir or config.data.dir)
    if not np.array_equal(bins.vocab.id_map, vocab.id_map):
        raise RunError(f"{bins.path}: tokenized with another vocabulary than {run_dir}'s; make "
                       f"bins it can read with python -m tjepa.data --source FILE --out DIR "
                       f"--vocab-from {run_dir}")
    results = probe.run_probes(model, bins, config.data.block_size, config.masking,
                               seed=config.train.seed, device=device,
                               max_documents=max_documents, random_inits=random_inits,
                               progress=progress, token_probes=token_probes, cache=cache)
    measured = [r for r in read_metrics(run_dir) if "rankme" in r and r["step"] <=
                model.checkpoint_step]
    val = bins.split("val")
    stories = probe_texts.cut_stories(val, range(min(len(val), max_documents)),
                                      config.data.block_size)
    report = {"run_dir": str(run_dir), "objective": config.objective.name,
              "checkpoint": model.checkpoint, "step": model.checkpoint_step,
              "data": str(bins.path), "probes": probe.as_dicts(results),
              "rankme": measured[-1]["rankme"] if measured else None,
              **probe.headline(results),
              "target_token_share": round(probe.token_share(
                  partial(probe.regression_targets, model), stories, device), 4)}
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    fig = plot.probe_figure(results)
    fig.savefig(run_dir / "eval.png", dpi=110)
    plot.plt.close(fig)
    return report


def rescore_shortcuts(run_dir: str | Path, data_dir: str | Path | None = None,
                      max_documents: int = probe.MAX_PROBE_DOCUMENTS,
                      progress: bool = True, memo: dict | None = None) -> dict:
    """A saved ``eval.json`` with the text-only shortcuts scored again (``probe.TEXT_SHORTCUTS``,
    one it lacks included), and its best baselines, margins and gains worked out anew; the
    encoders' scores stay as they are. The shortcuts read the probe texts alone, so this
    needs the run's config and data but not its checkpoint. Rewrites eval.json (and eval.png
    where there is one) and returns the report; ``shortcuts_rescored`` names the shortcuts.
    ``memo`` keeps the scores by the texts' settings, for the runs of one sweep to share."""
    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no eval.json; run python -m tjepa.eval {run_dir}")
    report = json.loads(path.read_text())
    config = load_config(run_dir / "config.toml")
    bins = data.TokenBins(data_dir or report.get("data") or config.data.dir)
    settings = (str(bins.path.resolve()), config.data.block_size, config.train.seed,
                max_documents)
    memo = {} if memo is None else memo
    if settings not in memo:
        memo[settings] = probe.shortcut_scores(bins, *settings[1:], progress=progress)
    scores = memo[settings]
    results = []
    for record in report["probes"]:
        result = probe.ProbeResult.from_dict(record)
        found = scores.get(result.name)
        if found is not None and result.baselines:
            if (found["n_train"], found["n_val"]) != (result.n_train, result.n_val):
                raise RunError(
                    f"{path}: {result.name} was probed on {result.n_train} + {result.n_val} "
                    f"texts, the shortcuts on {found['n_train']} + {found['n_val']}: pass the "
                    f"--max-documents and --data it was evaluated with")
            # in SHORTCUTS order, as a fresh eval has them: a tie's best_baseline_name follows it
            merged = result.baselines | found["baselines"]
            result.baselines = {k: merged[k] for k in probe.SHORTCUTS if k in merged}
        results.append(result)
    report["shortcuts_rescored"] = sorted(probe.TEXT_SHORTCUTS)
    return save_refreshed(run_dir, report, results)


def refresh_report(run_dir: str | Path) -> dict:
    """A saved ``eval.json`` with what it derives from its probe scores worked out anew: the
    probes' kinds under their current names, the headline and the probes passed
    (``probe.headline``). No score changes and no model is read. Rewrites eval.json (and
    eval.png where there is one) and returns the report."""
    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no eval.json; run python -m tjepa.eval {run_dir}")
    report = json.loads(path.read_text())
    results = [probe.ProbeResult.from_dict(r) for r in report["probes"]]
    return save_refreshed(run_dir, report, results)


def save_refreshed(run_dir: Path, report: dict, results: list[probe.ProbeResult]) -> dict:
    """``report`` with ``results`` as its probes and the headline they give, written back to
    the run folder's eval.json (and eval.png where there is one); keys of older reports that
    the headline replaces are dropped."""
    for retired in ("semantic_gain", "discourse_gain"):
        report.pop(retired, None)
    report.update(probes=probe.as_dicts(results), **probe.headline(results))
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2))
    if (run_dir / "eval.png").is_file():
        fig = plot.probe_figure(results)
        fig.savefig(run_dir / "eval.png", dpi=110)
        plot.plt.close(fig)
    return report


def probe_table(results: list[probe.ProbeResult]) -> str:
    """One run's probe results as a Markdown table: the trained encoder, random init, each
    shortcut, the best baseline and the margin over it."""
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    return markdown_table(
        ["probe", "kind", "trained", "random init", *probe.SHORTCUTS, "best baseline",
         "margin"],
        ([r.name, r.kind, fmt(r.trained), fmt(r.random_init),
          *(fmt(r.baselines.get(k)) for k in probe.SHORTCUTS), fmt(r.best_baseline),
          f"{r.margin:+.3f}"] for r in results))


KIND_ORDER = ("story", "sentences", "nonlinear", "lexical", "pretext", "information")


def runs_table(run_dirs: list[str | Path]) -> str:
    """Runs side by side from their ``eval.json`` and metrics: every probe by kind, marked ✓
    when it is in the headline (no shortcut reads it at ``probe.SHORTCUT_LINE``), the
    training gain and the probes passed, which checkpoint was probed, the final RankMe, the
    collapse alarm, and the loss from the first to the last log. A probe cell reads
    ``trained (random init / best shortcut)``; a probe a run's objective has no part for is
    a dash."""
    run_dirs = [Path(r) for r in run_dirs]
    reports = []
    for run_dir in run_dirs:
        if not (run_dir / "eval.json").is_file():
            raise RunError(f"{run_dir}: no eval.json; run python -m tjepa.eval {run_dir}")
        reports.append(json.loads((run_dir / "eval.json").read_text()))
    results = [{p["name"]: probe.ProbeResult.from_dict(p) for p in r["probes"]}
               for r in reports]
    kinds = {name: r.kind for found in results for name, r in found.items()}
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    cell = lambda r: "—" if r is None else (
        f"{r.trained:.3f} ({r.random_init:.3f} / {fmt(r.best_shortcut)})")
    rows = []
    for kind in KIND_ORDER:
        for name in [n for n, k in kinds.items() if k == kind]:
            headline = any(found[name].in_headline for found in results if name in found)
            rows.append([f"{name} ({kind})" + (" ✓" if headline else ""),
                         *(cell(found.get(name)) for found in results)])
    gains = [probe.training_gain(list(found.values())) for found in results]
    metrics = [read_metrics(d) for d in run_dirs]
    rows += [
        ["**training gain** (✓ probes: trained − random init)",
         *("—" if g is None else f"**{g:+.3f}**" for g in gains)],
        [f"passed (by ≥ {probe.NOISE} over the best baseline)",
         *(", ".join(probe.passed(list(found.values()))) or "none" for found in results)],
        ["objective", *(r.get("objective", "jepa") for r in reports)],
        ["checkpoint (step)", *(f"{Path(r['checkpoint']).name} ({r['step']})" for r in reports)],
        ["token RankMe", *("—" if r["rankme"] is None else f"{r['rankme']:.0f}"
                           for r in reports)],
        ["collapse alarm", *("yes" if any(m.get("collapse_alarm") for m in logged) else "no"
                             for logged in metrics)],
        ["loss, first → last log", *(f"{logged[0]['loss']:.3f} → {logged[-1]['loss']:.3f}"
                                     if logged else "—" for logged in metrics)],
    ]
    return markdown_table(["probe: trained (random init / best shortcut)",
                           *(d.name for d in run_dirs)], rows)


def headline_line(report: dict) -> str:
    """The headline of a report in one line: the training gain and the probes passed."""
    gain = report["training_gain"]
    return (f"training gain {'—' if gain is None else f'{gain:+.3f}'} (trained − random init "
            f"over {len(report['headline_probes'])} probes no shortcut reads at "
            f"{probe.SHORTCUT_LINE}); passed: {', '.join(report['passed']) or 'none'}")


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
    parser.add_argument("--checkpoint", default="last",
                        help="last (default), best (lowest validation loss) or a path")
    parser.add_argument("--no-token-probes", action="store_true",
                        help="the document probes only (the token probes' readout over the "
                             "vocabulary is slow on real text); the training gain is unchanged")
    parser.add_argument("--no-cache", action="store_true",
                        help="score the random-init twins and the text-only shortcuts again, "
                             "not from the bins folder's probe-cache/ (the same numbers)")
    parser.add_argument("--rescore-shortcuts", action="store_true",
                        help="score the text-only shortcuts again into each run's saved "
                             "eval.json (one it lacks included) and rework its margins and "
                             "gains; the encoders' scores stay, no checkpoint is read")
    parser.add_argument("--refresh", action="store_true",
                        help="rework each saved eval.json's kinds, headline and probes passed "
                             "from its probe scores (a report whose kinds or headline differ "
                             "from this version's); no probe is scored again")
    parser.add_argument("--saved", action="store_true",
                        help="with several runs: table their saved eval.json, probe nothing")
    parser.add_argument("--readme", help="with several runs: write their table between this "
                                         "file's markers")
    parser.add_argument("--marker", default="runs",
                        help="the markers' name: <!-- NAME:start --> … <!-- NAME:end -->")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tabled = (len(args.run_dirs) > 1 or args.saved) and not args.refresh
    if args.readme and not tabled:
        parser.error("--readme writes the table of several runs (or of --saved ones)")
    try:
        memo: dict = {}
        for run_dir in args.run_dirs if args.rescore_shortcuts else []:
            report = rescore_shortcuts(run_dir, args.data, args.max_documents, memo=memo)
            print(f"{run_dir}: shortcuts rescored; {headline_line(report)}")
        for run_dir in args.run_dirs if args.refresh else []:
            print(f"{run_dir}: {headline_line(refresh_report(run_dir))}")
        rescored = args.rescore_shortcuts or args.refresh
        for run_dir in [] if args.saved or rescored else args.run_dirs:
            report = evaluate_run(run_dir, args.data, args.device, args.max_documents,
                                  args.random_inits, checkpoint=args.checkpoint,
                                  token_probes=not args.no_token_probes,
                                  cache=not args.no_cache)
            print(f"{run_dir} ({Path(report['checkpoint']).name}, step {report['step']}):")
            print(probe_table([probe.ProbeResult.from_dict(r) for r in report["probes"]]))
            print(headline_line(report) + f"; RankMe {report['rankme']}; share of the "
                  "target embeddings' variance that the token's identity explains "
                  f"{report['target_token_share']:.2f}")
        table = runs_table(args.run_dirs) if tabled else None
    except (ConfigError, data.DataError, RunError) as e:
        print(f"tjepa.eval: error: {e}", file=sys.stderr)
        return 1
    if table:
        print(table)
        if args.readme:
            write_readme_table(args.readme, args.marker, table, command_line("tjepa.eval", argv))
    if args.json and not args.saved:
        print(json.dumps({k: report[k] for k in (
            "probes", "rankme", "training_gain", "headline_probes", "passed",
            "target_token_share", "checkpoint", "step", "objective")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
