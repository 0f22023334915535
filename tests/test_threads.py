"""Thread counts that leave the decoding threads their cores."""

from __future__ import annotations

import pytest
import torch

from sgs_tad.training.threads import available_cores, choose_threads, set_threads


def test_leaves_cores_for_decoding_and_respects_explicit_choices():
    assert choose_threads(decode_threads=1, cores=2, environ={}) == 1
    assert choose_threads(decode_threads=1, cores=1, environ={}) == 1  # never below one
    assert choose_threads(decode_threads=3, cores=8, environ={}) == 5
    assert choose_threads(decode_threads=0, cores=8, environ={}) == 8
    assert choose_threads(cores=8, environ={"OMP_NUM_THREADS": "3"}) == 3
    assert choose_threads(cores=8, environ={"OMP_NUM_THREADS": "3"}, requested=6) == 6
    assert choose_threads(cores=8, environ={"OMP_NUM_THREADS": "x"}) == 7
    assert choose_threads(environ={}) == max(1, available_cores() - 1)
    with pytest.raises(ValueError, match="decode_threads"):
        choose_threads(decode_threads=-1)
    with pytest.raises(ValueError, match="requested threads"):
        choose_threads(requested=0)


def test_set_threads_applies_the_choice():
    before = torch.get_num_threads()
    try:
        assert set_threads(requested=1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
