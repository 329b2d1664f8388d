"""Recipe experiments: variants of one config, trained and probed alike, side by side.

    python -m tjepa.lab.sweep --config configs/tinystories_cpu.toml --data DIR \\
        --variant "base" --variant "lr 1e-3: optim.lr=1e-3; optim.warmup_steps=100" \\
        [--steps N] [--seeds K] [--out DIR] [--readme FILE --marker NAME]
    python -m tjepa.lab.sweep --out DIR --saved [--readme FILE --marker NAME]

A variant is a name, then ``:`` and ``--set``-style overrides separated by ``;`` (none: the
config as it is). Every variant trains for the same steps on the same data and seeds, then
the probe suite reads its ``last.pt`` (document probes only unless ``--token-probes``: the
training gain does not need the others). Runs already finished in ``--out`` (their
``eval.json`` at the final step) are read, not trained again, so a sweep can be extended a
variant at a time and a stopped one picks up where it was; ``sweep.json`` keeps every
variant met in ``--out`` and the table lists them all. ``--readme`` writes the table between
that file's markers, so a page shows what the command printed and nothing typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tjepa.config import ConfigError
from tjepa.eval import evaluate_run
from tjepa.probe import NOISE, ProbeResult, training_gain
from tjepa.runs import load_config, read_metrics
from tjepa.tables import command_line, markdown_table, write_readme_table


@dataclass
class Variant:
    """A named set of overrides of one config file."""

    name: str
    config: str
    overrides: list[str]

    @classmethod
    def parse(cls, text: str, config: str) -> Variant:
        """``"NAME"`` or ``"NAME: section.key=value; section.key=value"``."""
        name, _, rest = text.partition(":")
        name = name.strip()
        if not name or "/" in name:
            raise ConfigError(f"variant {text!r}: give it a name (no '/') before the ':'")
        return cls(name, config, [s.strip() for s in rest.split(";") if s.strip()])


def run_variant(variant: Variant, seed: int, out: Path, data_dir: str | None = None,
                steps: int | None = None, max_documents: int = 1000, random_inits: int = 1,
                token_probes: bool = False, overrides: Sequence[str] = (),
                progress: bool = True) -> dict:
    """Train one variant at one seed (unless its run in ``out`` is finished and probed) and
    return its summary: the eval report, the metrics and the seconds per step.
    ``overrides`` apply before the variant's own."""
    from tjepa.train import train  # the lab trains; importing it lazily keeps --saved light

    settings = [*overrides, *variant.overrides, f"train.seed={seed}"]
    if data_dir:
        settings.append(f"data.dir={json.dumps(str(data_dir))}")
    if steps:
        settings.append(f"train.max_steps={steps}")
    config = load_config(variant.config, settings)
    run_dir = out / f"{variant.name}-seed{seed}"
    saved = run_dir / "eval.json"
    report = json.loads(saved.read_text()) if saved.is_file() else None
    if report is None or report["step"] != config.train.max_steps:
        trained = (run_dir / "metrics.jsonl").is_file() and any(
            m["step"] == config.train.max_steps for m in read_metrics(run_dir))
        if not trained:  # a run stopped part way resumes from its last.pt
            summary = train(config, run_dir, resume=(run_dir / "last.pt").is_file(),
                            progress=progress)
            if summary["stopped_early"]:  # SIGTERM or Ctrl-C: the sweep stops with its run
                raise KeyboardInterrupt(f"{run_dir} stopped at step {summary['step']}; the "
                                        "same command resumes it")
        evaluate_run(run_dir, max_documents=max_documents, random_inits=random_inits,
                     progress=progress, token_probes=token_probes)
    return read_run(run_dir, seed)


def read_run(run_dir: Path, seed: int) -> dict:
    """A finished, probed run of a sweep: its eval report, metrics and seconds per step, and
    its LiDAR when ``python -m tjepa.lab.lidar`` has measured it (``lidar.json``) at the step
    the report probed."""
    metrics = read_metrics(run_dir)
    timed = [m for m in metrics if "elapsed_s" in m]
    report = json.loads((run_dir / "eval.json").read_text())
    measured = run_dir / "lidar.json"
    lidar = json.loads(measured.read_text()) if measured.is_file() else {}
    return {"seed": seed, "run_dir": str(run_dir), "report": report, "metrics": metrics,
            "lidar": lidar if lidar.get("step") == report.get("step") else {},
            "seconds_per_step": timed[-1]["elapsed_s"] / max(timed[-1]["step"], 1)}


def variant_row(name: str, overrides: list[str], runs: list[dict]) -> dict:
    """One variant over its seeds: every probe's trained accuracy (mean and spread), random
    init, best shortcut, best baseline and margin; the training gain (mean and spread over
    seeds), the probes passed on every seed, the losses, RankMe, the alarm and the step
    time."""
    reports = [r["report"] for r in runs]
    # by name: a run probed with the token probes too holds more probes than one without
    by_name = [{p["name"]: ProbeResult.from_dict(p) for p in rep["probes"]} for rep in reports]
    probes = []
    for first in by_name[0].values():
        if not all(first.name in named for named in by_name):
            continue
        seeds = [named[first.name] for named in by_name]
        trained = [p.trained for p in seeds]
        best = [p.best_baseline for p in seeds]
        shortcut = [p.best_shortcut for p in seeds]
        probes.append({
            "name": first.name, "kind": first.kind,
            "trained": float(np.mean(trained)), "trained_std": float(np.std(trained)),
            "random_init": float(np.mean([p.random_init for p in seeds])),
            "best_baseline": float(np.mean(best)),
            "best_shortcut": None if None in shortcut else float(np.mean(shortcut)),
            "best_shortcut_name": max(first.baselines, key=first.baselines.get, default=None),
            "baselines": {k: float(np.mean([p.baselines[k] for p in seeds]))
                          for k in first.baselines},
            "added": float(np.mean([p.trained - p.random_init for p in seeds])),
            "margin": float(np.mean(np.subtract(trained, best))),
            "margins": [float(t - b) for t, b in zip(trained, best, strict=True)],
            "in_headline": all(p.in_headline for p in seeds)})
    gains = [training_gain(list(named.values())) for named in by_name]
    validation = [[m for m in r["metrics"] if "val_loss" in m] for r in runs]
    final = [r["metrics"][-1] for r in runs]
    return {
        "variant": name, "overrides": overrides, "seeds": [r["seed"] for r in runs],
        "steps": reports[0]["step"], "probes": probes,
        "training_gain": _mean(gains), "training_gain_std": _std(gains),
        "training_gains": gains,
        "passed": [p["name"] for p in probes if p["margins"]
                   and min(p["margins"]) >= NOISE and p["baselines"]],
        "final_loss": float(np.mean([m["loss"] for m in final])),
        "val_loss_first": float(np.mean([v[0]["val_loss"] for v in validation])),
        "val_loss_last": float(np.mean([v[-1]["val_loss"] for v in validation])),
        "val_gap_first": float(np.mean([v[0].get("val_constant_loss", np.nan)
                                        - v[0]["val_loss"] for v in validation])),
        "val_gap_last": float(np.mean([v[-1].get("val_constant_loss", np.nan)
                                       - v[-1]["val_loss"] for v in validation])),
        "rankme": float(np.mean([m.get("rankme", np.nan) for m in final])),
        "target_token_share": float(np.mean([rep.get("target_token_share", np.nan)
                                             for rep in reports])),
        "collapse_alarm": any(m.get("collapse_alarm") for r in runs for m in r["metrics"]),
        "seconds_per_step": float(np.mean([r["seconds_per_step"] for r in runs])),
    }


def sweep_table(rows: list[dict], brief: bool = False) -> str:
    """Variants as rows: what was changed; each headline probe (no shortcut reads it at
    ``SHORTCUT_LINE``), as trained accuracy with what training added to random init; the
    training gain (mean ± spread over seeds); the probes passed on every seed; and, unless
    ``brief``, the validation loss and how far below the constant prediction's it lies,
    RankMe, the target token share, the alarm and the step time. Random init and the
    shortcuts follow as rows (the first variant's runs')."""
    names = [p["name"] for p in rows[0]["probes"] if p["in_headline"]]
    if not names:
        raise ConfigError("the first variant's runs hold no probe that every shortcut misses: "
                          "evaluate them again (delete their eval.json and rerun the sweep)")

    def cell(p: dict | None) -> str:
        return "—" if p is None else f"{p['trained']:.3f} ({p['added']:+.3f})"

    table = []
    for row in rows:
        found, seeds = {p["name"]: p for p in row["probes"]}, len(row["seeds"])
        gain = row["training_gain"]
        cells = [row["variant"], f"{row['steps']} × {seeds}",
                 *(cell(found.get(n)) for n in names),
                 "—" if gain is None else f"{gain:+.3f}" + (
                     f" ± {row['training_gain_std']:.3f}" if seeds > 1 else ""),
                 ", ".join(row["passed"]) or "none"]
        alarm = "yes" if row["collapse_alarm"] else "no"
        table.append([*cells, alarm] if brief else [
            cells[0], "; ".join(f"`{o}`" for o in row["overrides"]) or "—", *cells[1:],
            f"{row['val_loss_first']:.3f} → {row['val_loss_last']:.3f}",
            f"{row['val_gap_first']:.4f} → {row['val_gap_last']:.4f}",
            f"{row['rankme']:.0f}", _share(row.get("target_token_share")), alarm,
            f"{row['seconds_per_step']:.2f}"])
    first = {p["name"]: p for p in rows[0]["probes"]}
    baselines = {"random init": {n: first[n]["random_init"] for n in names},
                 **{k.replace("_", " "): {n: first[n]["baselines"].get(k) for n in names}
                    for k in first[names[0]]["baselines"]}}
    for label, found in baselines.items():
        values = ["—" if found[n] is None else f"{found[n]:.3f}" for n in names]
        name = f"*{label}* (with {rows[0]['variant']})"
        table.append([name, "—", *values, "—", "—", "—"] if brief else
                     [name, "baseline", "—", *values, "—", "—",
                      "—", "—", "—", "—", "—", "—"])
    head = ["variant", "steps × seeds", *(f"{n}: trained (+ over random init)" for n in names),
            "**training gain** (± std over seeds)", f"passed (≥ +{NOISE} on every seed)"]
    if brief:
        return markdown_table([*head, "alarm"], table)
    return markdown_table(
        [head[0], "overrides", *head[1:], "val loss first → last",
         "val loss below the constant's, first → last", "token RankMe", "target token share",
         "alarm", "s/step"], table)


def probes_table(rows: list[dict]) -> str:
    """Every probe as a row, the variants as columns: random init, the best shortcut (and
    which), then each variant's trained accuracy (mean over seeds) and margin over its best
    baseline; ✓ marks the probes in the headline (no shortcut reads them at
    ``SHORTCUT_LINE``)."""
    found = [{p["name"]: p for p in row["probes"]} for row in rows]
    table = []
    for p in rows[0]["probes"]:
        if not p["baselines"]:
            continue  # the token probes and the forecast: no shortcut to set beside them
        shortcut = "—" if p["best_shortcut"] is None else (
            f"{p['best_shortcut']:.3f} ({p['best_shortcut_name'].replace('_', ' ')})")
        table.append([f"{p['name']} ({p['kind']})", "✓" if p["in_headline"] else "",
                      f"{p['random_init']:.3f}", shortcut,
                      *("—" if p["name"] not in f else
                        f"{f[p['name']]['trained']:.3f} ({f[p['name']]['margin']:+.3f})"
                        for f in found)])
    return markdown_table(["probe (kind)", "in the headline", "random init",
                           f"best shortcut (with {rows[0]['variant']})",
                           *(f"{row['variant']} (margin)" for row in rows)], table)


def _last(run: dict, key: str) -> float:
    found = [m[key] for m in run["metrics"] if key in m]
    return float(found[-1]) if found else float("nan")


def _gap(run: dict, relative: bool = False) -> float:
    validated = [m for m in run["metrics"] if "val_constant_loss" in m]
    if not validated:
        return float("nan")
    last = validated[-1]
    gap = last["val_constant_loss"] - last["val_loss"]
    return gap / last["val_constant_loss"] if relative else gap


# numbers a run shows without labels: could one tell a user the run is learning?
LABEL_FREE: dict[str, Callable[[dict], float]] = {
    "token RankMe (target encoder)": lambda run: _last(run, "rankme"),
    "document RankMe (target encoder)": lambda run: _last(run, "rankme_doc"),
    "token RankMe (context encoder)": lambda run: _last(run, "context_rankme"),
    "token RankMe (regression targets)": lambda run: _last(run, "targets_rankme"),
    "val loss below the constant's": _gap,
    "the same, relative to the constant's": lambda run: _gap(run, relative=True),
    "target token share": lambda run: run["report"].get("target_token_share", float("nan")),
    "LiDAR (context encoder, over masks)": lambda run: run["lidar"].get("context_lidar",
                                                                        float("nan")),
    "LiDAR (target encoder, over masks)": lambda run: run["lidar"].get("target_lidar",
                                                                       float("nan")),
}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank); NaN pairs left out."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties: their mean rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_left_out(x: Sequence[float], y: Sequence[float],
                      groups: Sequence[str] | None = None) -> tuple[float, float]:
    """The lowest and the highest Spearman correlation of ``x`` with ``y`` when any one group
    of pairs (``groups``: a name per pair, e.g. the variant whose seeds they are; each pair its
    own group by default) is left out: a correlation that one recipe carries swings far
    between the two."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    names = np.asarray(range(len(x)) if groups is None else groups)
    left_out = [spearman(x[names != g], y[names != g]) for g in dict.fromkeys(names.tolist())]
    kept = [r for r in left_out if not np.isnan(r)]
    return (min(kept), max(kept)) if kept else (float("nan"), float("nan"))


def label_free_table(out: Path, objective: str = "jepa") -> str:
    """Across every run of the sweep in ``out`` whose objective is ``objective``, each
    label-free number's rank correlation with the training gain, and the range of that
    correlation when any one variant (all its seeds) is left out."""
    runs = [(v["name"], read_run(out / f"{v['name']}-seed{s}", s))
            for v in saved_variants(out) for s in v["seeds"]]
    runs = [(name, r) for name, r in runs if r["report"].get("objective", "jepa") == objective]
    variants = [name for name, _ in runs]  # the variant of each run: its seeds leave together
    found = [r for _, r in runs]
    gains = [training_gain([ProbeResult.from_dict(p) for p in r["report"]["probes"]])
             for r in found]
    gains = [np.nan if g is None else g for g in gains]
    rows = []
    for name, measure in LABEL_FREE.items():
        values = [measure(r) for r in found]
        low, high = spearman_left_out(values, gains, variants)
        rows.append([name, _rho(spearman(values, gains)),
                     "—" if np.isnan(low) else f"{_rho(low)} … {_rho(high)}",
                     str(int(np.sum(~np.isnan(values))))])
    return markdown_table(["label-free number (at the run's end)", "ρ with the training gain",
                           "ρ, one variant left out", "runs"], rows)


def _rho(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:+.2f}"


def _mean(values: list[float | None]) -> float | None:
    return None if None in values else float(np.mean(values))


def _std(values: list[float | None]) -> float | None:
    return None if None in values else float(np.std(values))


def _share(value: float | None) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.2f}"


def sweep(variants: list[Variant], seeds: int = 1, out: str | Path = "out/sweep",
          data_dir: str | None = None, steps: int | None = None,
          max_documents: int = 1000, random_inits: int = 1, token_probes: bool = False,
          overrides: Sequence[str] = (), progress: bool = True) -> list[dict]:
    """Train and probe every variant at seeds 0..``seeds``-1; returns the rows of every
    variant the sweep in ``out`` holds (earlier calls' included, in the order first met).
    ``overrides`` apply to every variant, under the variant's own."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    known = {v["name"]: v for v in saved_variants(out)}
    for variant in variants:
        for seed in range(seeds):
            run_variant(variant, seed, out, data_dir, steps, max_documents, random_inits,
                        token_probes, overrides, progress)
        seen = known.get(variant.name, {}).get("seeds", [])
        known[variant.name] = {"name": variant.name, "config": variant.config,
                               "overrides": variant.overrides,
                               "seeds": sorted({*seen, *range(seeds)})}
        (out / "sweep.json").write_text(json.dumps({"variants": list(known.values())},
                                                   indent=2))
    return saved_rows(out)


def saved_variants(out: Path) -> list[dict]:
    """The variants recorded in ``out/sweep.json``: name, config, overrides, seeds."""
    saved = out / "sweep.json"
    return json.loads(saved.read_text())["variants"] if saved.is_file() else []


def saved_rows(out: Path) -> list[dict]:
    """Every recorded variant's row, read from its runs' eval.json and metrics."""
    return [variant_row(v["name"], v["overrides"],
                        [read_run(out / f"{v['name']}-seed{s}", s) for s in v["seeds"]])
            for v in saved_variants(out)]


def only_variants(rows: list[dict], names: list[str]) -> list[dict]:
    """The rows of the variants ``names``, in that order."""
    by_name = {row["variant"]: row for row in rows}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"--only: no variant {', '.join(missing)} (there are "
                          f"{', '.join(by_name)})")
    return [by_name[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="'NAME: section.key=value; ...'")
    parser.add_argument("--data", help="bins folder (default: the config's data.dir)")
    parser.add_argument("--steps", type=int, help="steps per run (default: the config's)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default="out/sweep")
    parser.add_argument("--max-documents", type=int, default=1000)
    parser.add_argument("--random-inits", type=int, default=1,
                        help="random-init twins per run (every seed brings its own)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value in every variant (under the variant's own)")
    parser.add_argument("--token-probes", action="store_true",
                        help="also run the token probes (slow on real text)")
    parser.add_argument("--saved", action="store_true", help="train nothing: table --out")
    parser.add_argument("--readme", help="rewrite the table between this file's markers")
    parser.add_argument("--marker", default="sweep",
                        help="the markers' name: <!-- NAME:start --> … <!-- NAME:end -->")
    parser.add_argument("--brief", action="store_true",
                        help="the table's probes, gain and alarm only (for a front page)")
    parser.add_argument("--only", metavar="NAME,NAME",
                        help="the table's variants, in this order (default: all, as met)")
    parser.add_argument("--probes", action="store_true",
                        help="instead: every probe as a row, with random init and the best "
                             "shortcut beside each variant's score")
    parser.add_argument("--label-free", action="store_true",
                        help="instead: each label-free number's rank correlation with the "
                             "gains, over the sweep's JEPA runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    saved = Path(args.out) / "sweep.json"
    try:
        if args.saved:
            if not saved.is_file():
                parser.error(f"--saved: no {saved}; run the sweep first")
            rows = saved_rows(Path(args.out))
        else:
            if not args.variant:
                parser.error("give at least one --variant (e.g. --variant base)")
            variants = [Variant.parse(v, args.config) for v in args.variant]
            rows = sweep(variants, args.seeds, args.out, args.data, args.steps,
                         args.max_documents, args.random_inits, args.token_probes,
                         args.set)
        if args.only:
            rows = only_variants(rows, args.only.split(","))
        table = (label_free_table(Path(args.out)) if args.label_free
                 else probes_table(rows) if args.probes else sweep_table(rows, args.brief))
    except ConfigError as e:
        print(f"tjepa.lab.sweep: error: {e}", file=sys.stderr)
        return 1
    print(table)
    if args.readme:
        write_readme_table(args.readme, args.marker, table, command_line("tjepa.lab.sweep", argv))
    if args.json:
        print(json.dumps({"rows": [{k: v for k, v in r.items()} for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
