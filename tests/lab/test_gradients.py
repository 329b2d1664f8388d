"""What each term of the loss sends into the context encoder, at a run's start and end."""

from __future__ import annotations

import pytest

from tests.helpers import tiny
from tjepa import runs, train
from tjepa.lab import gradients


@pytest.mark.parametrize("anti_collapse", ["vicreg", "ema"])
def test_each_term_s_gradient_is_measured_at_the_start_and_the_end(tinytales_bins, tmp_path,
                                                                  anti_collapse):
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=4",
                                         f'objective.anti_collapse="{anti_collapse}"'))
    train.train(config, tmp_path / "run", progress=False)
    rows = gradients.run_gradients(tmp_path / "run")
    assert [r["step"] for r in rows] == ["0", "4"]
    assert all(r["prediction"] > 0 for r in rows)
    if anti_collapse == "ema":  # no regularizer: nothing but the prediction moves the encoder
        assert all(r["regularizer"] == 0 and r["cosine"] == 0 for r in rows)
    else:
        assert all(r["regularizer"] > 0 and -1 <= r["cosine"] <= 1 for r in rows)
    assert rows[0]["prediction"] != rows[1]["prediction"]  # two models, not one twice
    table = gradients.gradients_table(rows)
    assert table.count("\n") == 3 and "regularizer / prediction" in table
