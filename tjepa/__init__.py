"""tjepa: a text Joint-Embedding Predictive Architecture you can read in an afternoon.

The core, in the order of the notebooks: ``data`` (text → token bins), ``masking`` (UL2
denoisers), ``attention`` (who may attend to whom), ``model`` (encoder, predictor),
``packing`` (batches without padding), ``jepa`` (the forward pass and loss), ``objective``
(loss and anti-collapse), ``mlm`` (the masked-LM baseline), ``optim`` (AdamW and schedules),
``step`` (one optimizer step), ``batches`` (the batch thread), ``monitor`` (collapse
metrics), ``probe`` (evaluation), ``plot`` (figures), ``train`` (the loop and CLI); ``config``
turns TOML into the dataclasses each module defines.
``runs`` reads and writes run folders; ``tjepa.embed_texts(run_dir, texts)`` embeds new text
with a trained run. ``tjepa.lab`` holds the benchmarks, the ablation and the README table
writer.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``tjepa.embed_texts`` without importing torch at ``import tjepa``
    if name == "embed_texts":
        from tjepa.runs import embed_texts

        return embed_texts
    raise AttributeError(f"module 'tjepa' has no attribute {name!r}")
