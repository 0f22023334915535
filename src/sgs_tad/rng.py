"""Capture and replay of torch RNG states, so a recompute sees the same dropout masks.

Phase 3 re-runs micro-batches that phase 1 already ran. If the encoder draws random numbers
(dropout, stochastic depth), the recompute must draw the same ones, or the gradient belongs to a
different function from the one that produced the features. We record the CPU state and the state
of every CUDA device the inputs live on before each phase-1 micro-batch that will be recomputed,
and restore them inside :func:`torch.random.fork_rng` for the recompute, which puts the global
states back afterwards: phase 3 leaves the global generators exactly where it found them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["RNGState", "capture_rng_state", "replay_rng_state"]


@dataclass(frozen=True)
class RNGState:
    """The torch RNG states needed to replay one micro-batch."""

    cpu: torch.Tensor
    cuda: dict[int, torch.Tensor] = field(default_factory=dict)


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def capture_rng_state(device: torch.device) -> RNGState:
    """Snapshot the CPU RNG and, for a CUDA ``device``, that device's RNG."""
    cuda = {d: torch.cuda.get_rng_state(d) for d in _cuda_devices(device)}
    return RNGState(cpu=torch.get_rng_state(), cuda=cuda)


@contextmanager
def replay_rng_state(state: RNGState | None) -> Iterator[None]:
    """Run the enclosed code with ``state`` restored; the global RNG is unchanged afterwards.

    With ``state=None`` the enclosed code runs with the current RNG, which it advances.
    """
    if state is None:
        yield
        return
    with torch.random.fork_rng(devices=list(state.cuda), enabled=True):
        torch.set_rng_state(state.cpu)
        for index, cuda_state in state.cuda.items():
            torch.cuda.set_rng_state(cuda_state, index)
        yield
