"""The batch thread: batches made ahead, and the time spent making and waiting for them."""

from __future__ import annotations

import time

import torch

from tjepa.batches import BatchStream
from tjepa.masking import MaskingConfig, MaskSampler


def test_batch_stream_counts_the_time_spent_making_batches_and_waiting_for_them():
    class SlowLoader:  # a batch every 0.1 s: the consumer below always waits
        position = 0

        def next_batch(self):
            time.sleep(0.1)
            self.position += 1
            return torch.randint(1, 50, (2, 32)), torch.tensor([32, 20])

    stream = BatchStream(SlowLoader(), MaskSampler(MaskingConfig("ul2"), seed=0),
                         lambda batch: batch)
    try:
        for _ in range(3):
            stream.next()
    finally:
        stream.close()
    assert stream.made >= 3 and stream.making_s >= 0.1 * stream.made
    assert stream.waiting_s >= 0.25  # three batches of 0.1 s, none made ahead
