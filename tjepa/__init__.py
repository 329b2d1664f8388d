"""tjepa: a text Joint-Embedding Predictive Architecture you can read in an afternoon.

Modules, in the order of the notebooks: ``data`` (text → token bins), ``masking`` (UL2
denoisers), ``model`` (encoder, predictor), ``jepa`` (the step), ``monitor`` (collapse
metrics), ``probe`` (evaluation), ``train`` (the loop and CLI).
"""

from __future__ import annotations

__version__ = "0.1.0"


def embed(run_dir, texts, batch_size: int = 64, device: str = "cpu"):
    """Mean-pooled embeddings of ``texts`` from a trained run folder: a (N, D) numpy array."""
    from tjepa.eval import embed as _embed

    return _embed(run_dir, texts, batch_size=batch_size, device=device)
