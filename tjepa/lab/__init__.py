"""The lab: tools that measure tjepa rather than teach it.

``bench`` times masking and the training step (``python -m tjepa.lab.bench``), ``breakdown``
says where a step's and a run's time goes (``python -m tjepa.lab.breakdown``), ``ablate`` and
``sweep`` train and probe variants side by side (``python -m tjepa.lab.ablate``,
``python -m tjepa.lab.sweep``), ``book`` renders the executed notebooks as HTML pages
(``python -m tjepa.lab.book``), ``shortcuts`` says what the text-only shortcuts read on a
corpus's probes (``python -m tjepa.lab.shortcuts``), ``gradients`` what each loss term sends
into the context encoder (``python -m tjepa.lab.gradients``), ``lidar`` measures trained runs'
LiDAR (``python -m tjepa.lab.lidar``). ``tjepa.tables`` writes their tables into the docs'
pages.
"""
