"""Shared fixtures: small bins folders made once per session, never the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny
from tjepa import data, runs, train

SHARED_SAMPLE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories_valid_sample.txt"
)


@pytest.fixture(scope="session")
def tinytales_bins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bins") / "tinytales"
    data.prepare("tinytales", out, max_documents=2000, seed=0)
    return out


@pytest.fixture(scope="session")
def tinystories_sample() -> Path:
    if not SHARED_SAMPLE.is_file():
        pytest.skip(f"the TinyStories sample is not at {SHARED_SAMPLE} (it is only beside "
                    "the project's own checkout)")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def tiny_run(tinytales_bins, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    config = runs.load_config(None, tiny(tinytales_bins, "train.max_steps=8",
                                          "monitor.interval=4"))
    train.train(config, run, progress=False)
    return run
