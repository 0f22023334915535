"""Real training steps measured, to check the planner's predictions (``--verify``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sgs_tad.engine.base import EndToEnd
from sgs_tad.engine.memory import Pool, SavedBytesMeter, _isolated, _sync
from sgs_tad.engine.sgs import SequentializedGradientSampler
from sgs_tad.plan.model import METHODS, Method, _positive_int

__all__ = ["RunMeasurement", "measure_run"]


@dataclass(frozen=True)
class RunMeasurement:
    """Saved bytes and time of real training steps, from :func:`measure_run`.

    Attributes:
        method: ``"naive"``, ``"checkpoint"`` or ``"sgs"``.
        n: Snippets in the video.
        k: Micro-batch size (``None`` for naive).
        ratio: γ for SGS, 1.0 otherwise.
        saved_bytes: Peak of the live bytes saved for backward during the step (unique
            storages, parameters excluded). Checkpointing recomputes inside its own hooks, so
            for it this is the kept inputs only.
        time_s: Wall time of one step (minimum over the timed repeats), the detector being a
            plain sum of the features.
    """

    method: Method
    n: int
    k: int | None
    ratio: float
    saved_bytes: int
    time_s: float


def measure_run(
    encoder: nn.Module,
    snippet_shape: Sequence[int],
    *,
    n: int,
    method: Method,
    k: int | None = None,
    ratio: float = 1.0,
    pool: Pool | None = None,
    dtype: torch.dtype = torch.float32,
    repeats: int = 1,
) -> RunMeasurement:
    """Run real training steps on one random video and measure them (to check predictions).

    Naive and checkpoint run :class:`~sgs_tad.EndToEnd`, SGS runs
    :class:`~sgs_tad.SequentializedGradientSampler` (``norm_policy="allow"``, no determinism
    check); the loss is the sum of the features. One untimed step measures the saved bytes,
    then ``repeats`` steps are timed. ``.grad``, buffers and random states are restored.

    Args:
        encoder: As for :func:`measure_snippet_cost` (on its target device).
        snippet_shape: Shape of one snippet.
        n: Snippets in the video.
        method: "naive", "checkpoint" or "sgs".
        k: Micro-batch size for "checkpoint" and "sgs".
        ratio: γ for "sgs".
        pool: Optional pooling of the encoder output.
        dtype: Dtype of the random snippets.
        repeats: Timed steps.

    Returns:
        The measurement.
    """
    n = _positive_int("n", n)
    repeats = _positive_int("repeats", repeats)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    if method != "naive" and k is None:
        raise ValueError(f"method={method!r} needs k, the micro-batch size (e.g. k=4).")
    params = list(encoder.parameters())
    dev = params[0].device if params else torch.device("cpu")
    state = [*params, *encoder.buffers()]
    engine: Any
    if method == "naive":
        engine = EndToEnd(encoder, pool=pool)
    elif method == "checkpoint":
        engine = EndToEnd(encoder, micro_batch_size=k, checkpoint=True, pool=pool)
    else:
        engine = SequentializedGradientSampler(
            encoder,
            micro_batch_size=_positive_int("k", k),
            ratio=ratio,
            pool=pool,
            norm_policy="allow",
            determinism_check=False,
        )

    with _isolated(encoder, dev):
        video = torch.randn((1, n, *snippet_shape), device=dev, dtype=dtype)

        def step() -> None:
            feats = engine.encode(video)
            feats.sum().backward()
            engine.backward(video, feats)
            for p in params:
                p.grad = None

        with SavedBytesMeter(exclude=[*state, video]) as meter:
            step()
        times = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            step()
            _sync(dev)
            times.append(time.perf_counter() - t0)
    return RunMeasurement(
        method=method,
        n=n,
        k=None if method == "naive" else min(int(k or n), n),
        ratio=float(ratio) if method == "sgs" else 1.0,
        saved_bytes=meter.peak,
        time_s=min(times),
    )
