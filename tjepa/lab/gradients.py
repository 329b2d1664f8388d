"""Which term of the loss moves the context encoder: the gradient that the prediction loss and
the anti-collapse term each send into it, at a run's start and at its end.

    python -m tjepa.lab.gradients RUN [RUN ...] [--readme FILE --marker NAME]

For each run folder: the model as the run's seed initializes it (step 0) and as its
``last.pt`` holds it, on the run's fixed validation batches (``batches.validation_batches``).
Each term is weighed as the training step weighs it (``TrainingStep``: the prediction loss by
``objective.prediction_weight``, the regularizer as it is); the table gives the norm of each
one's gradient over the context encoder's parameters (mean over the batches), their ratio and
the cosine between them. When the regularizer's gradient dwarfs the prediction's, the encoder
learns to spread its features more than to predict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tjepa import data
from tjepa.batches import validation_batches
from tjepa.runs import RunConfig, build_model, load_run
from tjepa.tables import command_line, markdown_table, write_readme_table


def term_gradients(model: torch.nn.Module, config: RunConfig, batches: list) -> dict:
    """Mean over ``batches`` of each term's gradient norm into the context encoder, and of
    the cosine between the two gradients."""
    params = [p for p in model.context_encoder.parameters() if p.requires_grad]
    norms = {"prediction": 0.0, "regularizer": 0.0, "cosine": 0.0}
    for batch in batches:
        loss_sum, count, regularizer = model(batch)
        prediction = config.objective.prediction_weight * loss_sum / count.clamp(min=1)
        grads = {}
        for name, term in (("prediction", prediction), ("regularizer", regularizer)):
            found = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True) \
                if term.requires_grad else [None] * len(params)
            grads[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                     for g, p in zip(found, params, strict=True)])
        for name, g in grads.items():
            norms[name] += float(g.norm()) / len(batches)
        a, b = grads["prediction"], grads["regularizer"]
        denominator = float(a.norm() * b.norm())
        norms["cosine"] += (float(a @ b) / denominator if denominator else 0.0) / len(batches)
    return norms


def run_gradients(run_dir: Path) -> list[dict]:
    """The table's rows for one run: at step 0 (the seed's initialization) and at ``last.pt``."""
    trained, config, _ = load_run(run_dir)
    bins = data.TokenBins(config.data.dir)
    batches = validation_batches(bins, config)
    torch.manual_seed(config.train.seed)  # as TrainingStep seeds the weights' init
    initial = build_model(config)
    rows = []
    for label, model in (("0", initial), (str(trained.checkpoint_step), trained)):
        model.train()
        torch.manual_seed(0)  # SIGReg's directions: the same draw for both
        rows.append({"run": run_dir.name, "step": label,
                     **term_gradients(model, config, batches)})
    return rows


def gradients_table(rows: list[dict]) -> str:
    return markdown_table(
        ["run", "step", "‖∇ prediction‖", "‖∇ regularizer‖", "regularizer / prediction",
         "cosine"],
        ([r["run"], r["step"], f"{r['prediction']:.4f}", f"{r['regularizer']:.4f}",
          f"{r['regularizer'] / r['prediction']:.2f}" if r["prediction"] else "—",
          f"{r['cosine']:+.3f}"] for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.gradients", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="run_dir")
    parser.add_argument("--readme", help="write the table between this file's markers")
    parser.add_argument("--marker", default="gradients")
    args = parser.parse_args(argv)
    rows = [row for run_dir in args.run_dirs for row in run_gradients(Path(run_dir))]
    table = gradients_table(rows)
    print(table)
    if args.readme:
        write_readme_table(args.readme, args.marker, table,
                           command_line("tjepa.lab.gradients", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
