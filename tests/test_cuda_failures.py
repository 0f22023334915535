"""CUDA failures a CPU can show with fakes (issue 20): F14 extract re-raises CUDA errors,
F13 a resume without CUDA RNG states on CUDA warns, F11 a compiled encoder that draws random
numbers is refused with RNG replay on."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from sgs_tad.engine.rng import capture_global_rng_state, restore_global_rng_state
from sgs_tad.engine.sources import TensorSource
from sgs_tad.extract import extract_features


class Failing(nn.Module):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error
        self.proj = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
    ],
    ids=["oom", "assert", "illegal-access"],
)
def test_extract_reraises_cuda_errors_instead_of_counting_them(tmp_path, error):
    videos = {f"v{i}": TensorSource(torch.randn(3, 4)) for i in range(3)}
    with pytest.raises(type(error), match="CUDA"):
        extract_features(Failing(error), videos, tmp_path, progress=False)


def test_extract_still_counts_an_ordinary_error_per_video(tmp_path):
    videos = {"v0": TensorSource(torch.randn(3, 4))}
    summary = extract_features(Failing(ValueError("bad frame")), videos, tmp_path,
                               progress=False)  # fmt: skip
    assert "bad frame" in summary["failures"]["v0"]


def test_a_cpu_checkpoint_resumed_on_cuda_warns_that_cuda_streams_are_not_restored(
    monkeypatch, caplog
):
    state = capture_global_rng_state()
    assert state["cuda"] == []  # written without CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="sgs_tad.engine.rng"):
        restore_global_rng_state(state)
    assert "no CUDA RNG state" in caplog.text and "torch.cuda.manual_seed" in caplog.text


def _encoder(dropout: float) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Dropout(dropout))


def test_a_compiled_encoder_with_dropout_is_refused_when_replaying():
    """F11: phases 1 and 3 of a compiled encoder are different graphs with different random
    streams; refused on the first batch. (backend="eager": dynamo only, fast, no C++.)"""
    from sgs_tad import SequentializedGradientSampler
    from sgs_tad.engine.compiled import is_compiled

    encoder = torch.compile(_encoder(0.5), backend="eager")
    assert is_compiled(encoder) and not is_compiled(_encoder(0.5))
    sgs = SequentializedGradientSampler(encoder, ratio=0.5, micro_batch_size=2)
    with pytest.raises(ValueError, match=r"compiled.*dropout.*_orig_mod"):
        sgs.encode(torch.randn(1, 6, 2, 3))
    # Without randomness, or without replay (the user's choice), it runs.
    x = torch.randn(1, 6, 2, 3)
    plain = torch.compile(_encoder(0.0), backend="eager")
    SequentializedGradientSampler(plain, ratio=0.5, micro_batch_size=2).encode(x)
    SequentializedGradientSampler(encoder, ratio=0.5, preserve_rng_state=False).encode(x)
