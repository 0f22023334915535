"""What the engine records: counters of the last call, and what phase 1 leaves for phase 3."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sgs_tad.engine.microbatch import EncodePlan
from sgs_tad.engine.rng import RNGState

__all__ = ["EncodeRecord", "SGSStats", "autocast_state"]


@dataclass
class SGSStats:
    """Counters of the last phase-1 and phase-3 calls (for logs and tests).

    Attributes:
        encode_calls: Encoder calls made by the last :meth:`~SequentializedGradientSampler.encode`.
        recompute_calls: Encoder calls made by the last ``backward``.
        snippets_encoded: Snippets run through the encoder in phase 1.
        snippets_recomputed: Snippets re-run with grad in phase 3 (fillers included).
        snippets_sampled: Snippets whose feature gradient reached the encoder.
        snippets_kept: Sampled snippets whose phase-1 graph was kept (not recomputed).
        kept_bytes: Saved-activation bytes of the kept graphs (measured when the budget is
            in bytes, else 0).
        snippets_prefix_kept: Sampled snippets whose frozen prefix output phase 1 kept, so
            that phase 3 re-ran only the trainable stages (:mod:`sgs_tad.engine.prefix`).
        prefix_bytes: Bytes of those kept prefix outputs.
    """

    encode_calls: int = 0
    recompute_calls: int = 0
    snippets_encoded: int = 0
    snippets_recomputed: int = 0
    snippets_sampled: int = 0
    snippets_kept: int = 0
    kept_bytes: int = 0
    snippets_prefix_kept: int = 0
    prefix_bytes: int = 0


@dataclass
class EncodeRecord:
    """What phase 1 leaves for phase 3 of the same batch (no activations: see ``encode``)."""

    lengths: list[int]
    mask: torch.Tensor
    # Pre-drawn sample (feature-independent samplers): the phase-3 micro-batches are the first
    # phase-1 micro-batches (plan.sampled), replayed with their RNG states. None: draw later.
    plan: EncodePlan | None
    # Pre-drawn sample of an encoder without randomness whose phase 1 ran in larger calls:
    # phase 3 recomputes it in fresh micro-batches of K (nothing to replay).
    picks: list[torch.Tensor] | None = None
    rng_states: list[RNGState | None] = field(default_factory=list)
    autocast: dict[str, Any] = field(default_factory=dict)
    # Outputs (with their graphs) of the leading sampled micro-batches kept in phase 1.
    kept: list[torch.Tensor] = field(default_factory=list)
    # Frozen-prefix outputs of the sampled micro-batches (None: re-run whole), and the number
    # of stages they cover (sgs_tad.engine.prefix).
    prefixes: list[torch.Tensor | None] = field(default_factory=list)
    prefix_stages: int = 0


def autocast_state(device_type: str) -> dict[str, Any]:
    """The autocast settings in force for ``device_type`` (re-applied in phase 3)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4 has per-device functions only
        if device_type == "cpu":
            enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return {
        "device_type": device_type,
        "enabled": enabled,
        "dtype": dtype,
        "cache_enabled": torch.is_autocast_cache_enabled(),
    }
