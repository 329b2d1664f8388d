"""tjepa: a text Joint-Embedding Predictive Architecture you can read in an afternoon.

The core, in the order of the notebooks: ``data`` (text → token bins; ``corpus``, the built-in
tinytales), ``masking`` (UL2 denoisers), ``attention`` (who may attend to whom), ``model``
(encoder, predictor, and ``Learner``: what any model offers the step, the monitor and the
probes), ``packing`` (batches without padding), ``jepa`` (the JEPA the walkthrough teaches),
``objective`` (its loss and the anti-collapse terms), ``mlm`` (the masked-LM baseline),
``optim`` (AdamW and schedules), ``step`` (one optimizer step), ``batches`` (the batch
thread), ``monitor`` (collapse metrics), ``probe`` (evaluation and its headline, with
``probe_texts``, the probes' texts, and ``probe_cache``, the baselines' scores kept), ``plot``
(figures), ``train`` (the loop and CLI); ``config`` turns TOML into the dataclasses each module
defines. ``variants`` holds the other students, losses and targets the experiments measured,
and builds every model from ``[objective]``. ``runs`` reads and writes run folders; ``eval``
probes a run and ``tables`` writes the docs' tables; ``tjepa.embed_texts(run_dir, texts)``
embeds new text with a trained run. ``tjepa.lab`` holds the benchmarks, sweeps, the ablation
and the rendered book.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``tjepa.embed_texts`` without importing torch at ``import tjepa``
    if name == "embed_texts":
        from tjepa.runs import embed_texts

        return embed_texts
    raise AttributeError(f"module 'tjepa' has no attribute {name!r}")
