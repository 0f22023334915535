"""Every save and restore of random states in sgs_tad: micro-batch replay and resume.

Two different needs, two names:

* **Replay** (:func:`capture_replay_state`, :func:`replay_rng_state`). Phase 3 re-runs
  micro-batches that phase 1 already ran. If the encoder draws random numbers (dropout,
  stochastic depth), the recompute must draw the same ones, or the gradient belongs to a
  different function from the one that produced the features. We record the CPU state and the
  state of the CUDA device the inputs live on before each phase-1 micro-batch that will be
  recomputed, and restore them inside :func:`torch.random.fork_rng` for the recompute, which
  puts the global states back afterwards: phase 3 leaves the global generators exactly where it
  found them.
* **Resume** (:func:`capture_global_rng_state`, :func:`restore_global_rng_state`). A checkpoint
  holds every global generator a bit-identical resume needs (torch CPU and CUDA, NumPy,
  Python's ``random``) in a form ``torch.load(weights_only=True)`` accepts.

Example:
    >>> import torch
    >>> state = capture_replay_state(torch.device("cpu"))
    >>> a = torch.rand(2)
    >>> with replay_rng_state(state):
    ...     b = torch.rand(2)
    >>> torch.equal(a, b)
    True
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "RNGState",
    "capture_global_rng_state",
    "capture_replay_state",
    "replay_rng_state",
    "restore_global_rng_state",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ micro-batch replay


@dataclass(frozen=True)
class RNGState:
    """The torch RNG states needed to replay one micro-batch."""

    cpu: torch.Tensor
    cuda: dict[int, torch.Tensor] = field(default_factory=dict)


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def capture_replay_state(device: torch.device) -> RNGState:
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


# ---------------------------------------------------------------------------- resume


def capture_global_rng_state() -> dict[str, Any]:
    """The global random states a resume must restore, in a ``weights_only``-safe form.

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor, ...], "numpy": {...}, "python": tuple}``.
        CUDA states are captured only when CUDA is initialised (capturing would otherwise
        create a CUDA context).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = list(torch.cuda.get_rng_state_all())
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def restore_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_global_rng_state` captured (CUDA only if CUDA is here)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if not cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        logger.warning(
            "the checkpoint holds no CUDA RNG state (written on the CPU, or before CUDA was"
            " used) while this run uses CUDA: CUDA random streams (dropout on the GPU) are not"
            " restored, so the resume is not bit-identical. Resume on the kind of device the"
            " checkpoint was written on, or seed the streams with torch.cuda.manual_seed_all."
        )
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            logger.warning(
                "the checkpoint holds %d CUDA RNG states but %d devices are visible; CUDA"
                " random streams are not restored.",
                len(cuda),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all(cuda)
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
