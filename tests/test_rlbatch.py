"""nanosafe/rlbatch.py: how one RL step splits into optimiser steps and forward passes."""
import pytest

from nanosafe import rlbatch


@pytest.mark.parametrize("n, minis, micro, want", [
    (8, 2, 3, [[[0, 1, 2], [3]], [[4, 5, 6], [7]]]),  # micro-batches never straddle a mini-batch
    (5, 2, 8, [[[0, 1, 2]], [[3, 4]]]),  # an uneven split: the last mini-batch is the short one
    (4, 1, 1, [[[0], [1], [2], [3]]]),
])
def test_split_into_mini_and_micro_batches(n, minis, micro, want):
    got = rlbatch.split(n, minis, micro)
    assert got == want
    assert [i for mini in got for m in mini for i in m] == list(range(n))  # every response once, in order
