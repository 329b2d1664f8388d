"""The lab: tools that measure tjepa rather than teach it.

``bench`` times masking and the training step (``python -m tjepa.lab.bench``), ``ablate``
trains and probes the anti-collapse mechanisms side by side (``python -m tjepa.lab.ablate``),
and ``report`` writes their tables, and the evaluation's, between README markers.
"""
