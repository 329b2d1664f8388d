"""LiDAR of trained runs: the effective rank of a run's embeddings, each direction weighed by
how far documents differ along it against how far one document's masked views do
(``tjepa.monitor.lidar``, Thilak et al. 2023).

    python -m tjepa.lab.lidar RUN [RUN ...] [--data DIR] [--documents N] [--views Q]

For each run folder: its ``last.pt``, on the first ``--documents`` validation documents (of
at least ``data.min_tokens`` tokens, as training reads), each seen through ``--views`` masks
drawn by the run's own masking (a view is what the context encoder reads in training). Each
encoder reads every view as it reads in training — the context encoder with ``[MASK]`` at
the targets when the model has a ``[MASK]`` id (data2vec's student, the masked LMs), the
context tokens alone otherwise; the target encoder the context tokens alone — mean-pooled
over the context. LiDAR treats each document as a class and its views as that class's
samples. The masks are drawn from one fixed seed, so runs with the same masking see the same
views of the same documents; runs with another masking see other views, so their LiDAR
measures their masking too. ``lidar.json`` also holds each encoder's chance level (the views
dealt to documents at random: ``monitor.lidar_chance``) and the most LiDAR can read here,
min(documents − 1, width). Writes ``lidar.json`` into each run folder, where ``python -m
tjepa.lab.sweep --label-free`` reads it when its step is the report's, and prints one line per
run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tjepa import data
from tjepa.masking import MaskSampler
from tjepa.monitor import lidar, lidar_chance, view_embeddings
from tjepa.runs import load_run

DOCUMENTS = 256
VIEWS = 8
MASK_SEED = 0
BATCH_DOCUMENTS = 32


def run_lidar(run_dir: str | Path, data_dir: str | Path | None = None,
              documents: int = DOCUMENTS, views: int = VIEWS, progress: bool = True) -> dict:
    """LiDAR of the context and the target encoder of a run's ``last.pt``; written to the run
    folder's ``lidar.json`` and returned."""
    run_dir = Path(run_dir)
    model, config, _ = load_run(run_dir)
    val = data.TokenBins(data_dir or config.data.dir).split("val")
    long_enough = np.flatnonzero(val.lengths >= config.data.min_tokens)  # as training reads
    if len(long_enough) < 2:
        raise ValueError(f"{run_dir}: LiDAR needs at least 2 validation documents of "
                         f"{config.data.min_tokens} tokens or more, found {len(long_enough)}")
    chosen = long_enough[:documents]
    sampler = MaskSampler(replace(config.masking, views=views), seed=MASK_SEED)
    encoders = {"context": (model.context_encoder, model.mask_id),
                "target": (model.target_encoder, None)}
    pooled: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    starts = range(0, len(chosen), BATCH_DOCUMENTS)
    for start in tqdm(starts, desc=f"lidar {run_dir.name}", disable=not progress, leave=False):
        tokens, lengths = val.batch(chosen[start : start + BATCH_DOCUMENTS],
                                    config.data.block_size)
        batch = sampler(tokens, lengths)
        for name, (encoder, mask_id) in encoders.items():
            pooled[name].append(view_embeddings(encoder, batch, config.model.attention,
                                                mask_id))
    embedded = {name: torch.cat(found) for name, found in pooled.items()}
    report = {"checkpoint": model.checkpoint, "step": model.checkpoint_step,
              "documents": len(chosen), "views": views, "mask_seed": MASK_SEED,
              "masking": config.masking.mixture, "max_lidar": min(len(chosen) - 1,
                                                                  config.model.dim),
              **{f"{name}_lidar": round(lidar(x), 4) for name, x in embedded.items()},
              **{f"{name}_lidar_chance": round(lidar_chance(x), 4)
                 for name, x in embedded.items()}}
    (run_dir / "lidar.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tjepa.lab.lidar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="run_dir")
    parser.add_argument("--data", help="bins folder (default: each run's data.dir)")
    parser.add_argument("--documents", type=int, default=DOCUMENTS)
    parser.add_argument("--views", type=int, default=VIEWS)
    args = parser.parse_args(argv)
    if args.documents < 2 or args.views < 2:
        parser.error("--documents and --views must each be at least 2")
    for run_dir in args.run_dirs:
        report = run_lidar(run_dir, args.data, args.documents, args.views)
        print(f"{run_dir}: context LiDAR {report['context_lidar']:.2f} (chance "
              f"{report['context_lidar_chance']:.2f}), target LiDAR "
              f"{report['target_lidar']:.2f} (chance {report['target_lidar_chance']:.2f}); "
              f"at most {report['max_lidar']} (step {report['step']}, {report['documents']} "
              f"documents × {report['views']} views)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
