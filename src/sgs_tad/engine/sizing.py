"""Automatic sizing: K from a memory budget, and the size of the no-grad phase-1 calls.

``micro_batch_size="auto"`` probes one micro-batch
(:func:`~sgs_tad.engine.memory.measure_snippet_cost`)
and takes the largest K whose activations fit ``memory_budget`` (on CUDA two probes, M = 2 and
4, fit a fixed and a per-snippet cost: see :func:`fit_fixed_and_per_snippet`);
``encode_batch_size="auto"``
measures, on the first batch at no extra cost, what one snippet saves for backward and what a
no-grad forward needs, and sizes the phase-1 calls from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sgs_tad.engine.memory import format_bytes, measure_snippet_cost
from sgs_tad.engine.microbatch import as_sources
from sgs_tad.engine.sources import SnippetSource

__all__ = [
    "AUTO_ENCODE_FACTOR",
    "AUTO_ENCODE_LIMIT",
    "PROBE_SIZES",
    "AutoSizing",
    "fit_fixed_and_per_snippet",
    "probe_dtype",
]

logger = logging.getLogger("sgs_tad.engine.sgs")

AUTO_ENCODE_FACTOR = 8  # encode_batch_size="auto" without a budget: phase-1 calls of 8 K
AUTO_ENCODE_LIMIT = 1024  # the most snippets "auto" puts in one call
# micro_batch_size="auto" probes: on CUDA two sizes, to tell the fixed cost from the per-snippet.
PROBE_SIZES = {"cuda": (2, 4), "other": (2,)}


def fit_fixed_and_per_snippet(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """``(fixed, per_snippet)`` bytes of a line through measured ``(snippets, total bytes)``.

    On CUDA a micro-batch's peak holds costs that do not grow with it: cuDNN workspace, the
    caching allocator's rounding. Divided by the probe's size and multiplied by K, as one
    probe must, they make K too small. Two probe sizes separate them. A fit that is not
    physical (a slope <= 0 or a negative intercept, from noise) falls back to no fixed cost
    and the largest per-snippet total, which can only make K smaller, never too large.

    Example:
        >>> fit_fixed_and_per_snippet([(2, 600.0), (4, 1000.0)])
        (200.0, 200.0)
        >>> fit_fixed_and_per_snippet([(2, 300.0)])
        (0.0, 150.0)
    """
    if not points:
        raise ValueError("fit_fixed_and_per_snippet needs at least one measurement.")
    worst = max(total / m for m, total in points)
    (m1, y1), (m2, y2) = min(points), max(points)
    if m2 == m1:
        return 0.0, worst
    slope = (y2 - y1) / (m2 - m1)
    fixed = y1 - slope * m1
    if slope <= 0 or fixed < 0:
        return 0.0, worst
    return fixed, slope


def probe_dtype(snippets: torch.Tensor) -> torch.dtype:
    """The dtype the probe's random snippets take for ``snippets``: theirs if floating point;
    float32 for uint8 pixels, which the encoder normalises to float before its first layer, so
    its activations are those of float input."""
    return snippets.dtype if snippets.is_floating_point() else torch.float32


class AutoSizing:
    """The sizing half of :class:`~sgs_tad.SequentializedGradientSampler` (a mixin)."""

    encoder: nn.Module
    pool: Callable[[torch.Tensor], torch.Tensor] | None
    ratio: float
    memory_budget: int | None
    micro_batch_size: int
    encode_batch_size: int
    auto_choice: dict[str, Any] | None
    phase1_choice: dict[str, Any] | None
    _auto_k: bool
    _auto_k1: bool
    _k1_option: int | str | None
    _sizing: dict[str, float | None] | None
    _rng_free: bool | None
    _independence_checked: bool

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def _set_encode_batch_size(
        self, nograd_bytes_per_snippet: float | None, nograd_fixed_bytes: float = 0.0
    ) -> None:
        k = self.micro_batch_size
        if not self._auto_k1:
            self.encode_batch_size = int(self._k1_option or k)
        elif nograd_bytes_per_snippet and self.memory_budget is not None:
            room = self.memory_budget - nograd_fixed_bytes
            fits = int(room // max(nograd_bytes_per_snippet, 1.0))
            self.encode_batch_size = max(k, min(fits, AUTO_ENCODE_LIMIT))
        else:
            # Measured on the first batch at no extra cost (see _measure_phase1_size): until
            # then phase 1 runs at K, which is always safe.
            self.encode_batch_size = k
            self._sizing = {"saved": None, "workspace": None}

    def _sizes_state(self) -> dict[str, Any]:
        """What the first batches measured, for checkpoints (see ``state_dict``)."""
        return {
            "micro_batch_size": self.micro_batch_size,
            "encode_batch_size": self.encode_batch_size,
            "auto_k": self._auto_k,
            "sizing": None if self._sizing is None else dict(self._sizing),
            "auto_choice": self.auto_choice,
            "phase1_choice": self.phase1_choice,
            "rng_free": self._rng_free,
            "independence_checked": self._independence_checked,
        }

    def _load_sizes_state(self, sizes: dict[str, Any]) -> None:
        self.micro_batch_size = int(sizes["micro_batch_size"])
        self.encode_batch_size = int(sizes["encode_batch_size"])
        self._auto_k = bool(sizes["auto_k"])
        self._sizing = None if sizes["sizing"] is None else dict(sizes["sizing"])
        self.auto_choice = sizes["auto_choice"]
        self.phase1_choice = sizes["phase1_choice"]
        self._rng_free = sizes["rng_free"]
        self._independence_checked = bool(sizes["independence_checked"])

    def _maybe_choose_phase1_size(self) -> None:
        """``encode_batch_size="auto"`` without a budget, once both costs are measured.

        The phase-1 calls get as many snippets as keep their transient (no-grad) memory within
        that of one phase-3 micro-batch, K (s + w), at most 8 K: the peak stays that of K
        snippets while the calls grow.
        """
        sizing = self._sizing
        if sizing is None or sizing["workspace"] is None:
            return
        k, w = self.micro_batch_size, max(float(sizing["workspace"]), 1.0)
        if sizing["saved"] is None:
            if self.ratio > 0:
                return  # wait for phase 3's measurement
            fits = AUTO_ENCODE_FACTOR * k  # frozen: no phase 3 to stay below
        else:
            fits = int(k * (float(sizing["saved"]) + w) // w)
        self.encode_batch_size = max(k, min(fits, AUTO_ENCODE_FACTOR * k))
        self.phase1_choice = {
            "encode_batch_size": self.encode_batch_size,
            "saved_bytes_per_snippet": sizing["saved"],
            "workspace_bytes_per_snippet": sizing["workspace"],
        }
        self._sizing = None
        logger.info(
            "encode_batch_size='auto': phase-1 calls of %d snippets (K = %d; measured %s saved"
            " + %s workspace per snippet)", self.encode_batch_size, k,
            sizing["saved"], sizing["workspace"],
        )  # fmt: skip

    def resolve_sizing(self, snippets: Any) -> None:
        """Choose ``micro_batch_size="auto"`` now, from the first snippet of ``snippets``.

        The probe otherwise runs at the first :meth:`encode`; calling this first lets a
        program report K (:attr:`auto_choice`) before training, or fail early on a budget too
        small for one snippet. Nothing happens when K is already known.

        Args:
            snippets: As for :meth:`encode` (only the first snippet is read).

        Raises:
            ValueError: ``memory_budget`` cannot hold one snippet's activations.
        """
        if self._auto_k:
            self._resolve_auto(as_sources(snippets))

    def _resolve_auto(self, sources: Sequence[SnippetSource]) -> None:
        """Choose K (and the phase-1 size) from the memory budget with a one-off probe."""
        assert self.memory_budget is not None
        first = sources[0].get_snippets(torch.zeros(1, dtype=torch.long))
        sizes = PROBE_SIZES["cuda" if self.device.type == "cuda" else "other"]
        costs = [measure_snippet_cost(self.encoder, tuple(first.shape[1:]), micro_batch_size=m,
                                      device=self.device, pool=self.pool, dtype=probe_dtype(first),
                                      repeats=1) for m in sizes]  # fmt: skip
        cost = costs[0]
        fixed, per_snippet = fit_fixed_and_per_snippet(
            [(c.micro_batch_size, c.micro_batch_size * (c.saved_bytes + c.workspace_bytes))
             for c in costs]
        )  # fmt: skip
        nograd_fixed, nograd = fit_fixed_and_per_snippet(
            [(c.micro_batch_size, c.micro_batch_size * c.nograd_peak_bytes) for c in costs]
        )
        k = int((self.memory_budget - fixed) // max(per_snippet, 1.0))
        if k < 1:
            raise ValueError(
                f"memory_budget={format_bytes(self.memory_budget)} cannot hold one snippet: "
                f"the probe measured {format_bytes(per_snippet)} per snippet "
                f"({format_bytes(cost.saved_bytes)} saved for backward + "
                f"{format_bytes(cost.workspace_bytes)} workspace) and "
                f"{format_bytes(fixed)} fixed per micro-batch for snippets "
                f"{tuple(first.shape[1:])}. Raise the budget, use smaller snippets, or freeze "
                "more encoder stages."
            )
        self.micro_batch_size = min(k, AUTO_ENCODE_LIMIT)
        self._set_encode_batch_size(nograd, nograd_fixed)
        self._auto_k = False
        self.auto_choice = {
            "micro_batch_size": self.micro_batch_size,
            "encode_batch_size": self.encode_batch_size,
            "memory_budget": self.memory_budget,
            "saved_bytes_per_snippet": cost.saved_bytes,
            "workspace_bytes_per_snippet": cost.workspace_bytes,
            "nograd_bytes_per_snippet": nograd,
            "bytes_per_snippet": per_snippet,
            "fixed_bytes": fixed,
            "nograd_fixed_bytes": nograd_fixed,
            "probe_sizes": list(sizes),
        }
        logger.info(
            "micro_batch_size='auto': K = %d, phase-1 calls of %d (budget %s; measured %s saved"
            " + %s workspace per snippet)",
            self.micro_batch_size, self.encode_batch_size, format_bytes(self.memory_budget),
            format_bytes(cost.saved_bytes), format_bytes(cost.workspace_bytes),
        )  # fmt: skip
