"""Automatic sizing: K from a memory budget, and the size of the no-grad phase-1 calls.

``micro_batch_size="auto"`` probes one micro-batch
(:func:`~sgs_tad.engine.memory.measure_snippet_cost`)
and takes the largest K whose activations fit ``memory_budget``; ``encode_batch_size="auto"``
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

__all__ = ["AUTO_ENCODE_FACTOR", "AUTO_ENCODE_LIMIT", "AutoSizing", "probe_dtype"]

logger = logging.getLogger("sgs_tad.engine.sgs")

AUTO_ENCODE_FACTOR = 8  # encode_batch_size="auto" without a budget: phase-1 calls of 8 K
AUTO_ENCODE_LIMIT = 1024  # the most snippets "auto" puts in one call


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

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def _set_encode_batch_size(self, nograd_bytes_per_snippet: float | None) -> None:
        k = self.micro_batch_size
        if not self._auto_k1:
            self.encode_batch_size = int(self._k1_option or k)
        elif nograd_bytes_per_snippet and self.memory_budget is not None:
            fits = int(self.memory_budget // max(nograd_bytes_per_snippet, 1.0))
            self.encode_batch_size = max(k, min(fits, AUTO_ENCODE_LIMIT))
        else:
            # Measured on the first batch at no extra cost (see _measure_phase1_size): until
            # then phase 1 runs at K, which is always safe.
            self.encode_batch_size = k
            self._sizing = {"saved": None, "workspace": None}

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
        cost = measure_snippet_cost(self.encoder, tuple(first.shape[1:]), micro_batch_size=2,
                                    device=self.device, pool=self.pool,
                                    dtype=probe_dtype(first), repeats=1)  # fmt: skip
        per_snippet = cost.saved_bytes + cost.workspace_bytes
        k = int(self.memory_budget // max(per_snippet, 1.0))
        if k < 1:
            raise ValueError(
                f"memory_budget={format_bytes(self.memory_budget)} cannot hold one snippet: "
                f"the probe measured {format_bytes(per_snippet)} per snippet "
                f"({format_bytes(cost.saved_bytes)} saved for backward + "
                f"{format_bytes(cost.workspace_bytes)} workspace) for snippets "
                f"{tuple(first.shape[1:])}. Raise the budget, use smaller snippets, or freeze "
                "more encoder stages."
            )
        self.micro_batch_size = min(k, AUTO_ENCODE_LIMIT)
        self._set_encode_batch_size(cost.nograd_peak_bytes)
        self._auto_k = False
        self.auto_choice = {
            "micro_batch_size": self.micro_batch_size,
            "encode_batch_size": self.encode_batch_size,
            "memory_budget": self.memory_budget,
            "saved_bytes_per_snippet": cost.saved_bytes,
            "workspace_bytes_per_snippet": cost.workspace_bytes,
            "nograd_bytes_per_snippet": cost.nograd_peak_bytes,
        }
        logger.info(
            "micro_batch_size='auto': K = %d, phase-1 calls of %d (budget %s; measured %s saved"
            " + %s workspace per snippet)",
            self.micro_batch_size, self.encode_batch_size, format_bytes(self.memory_budget),
            format_bytes(cost.saved_bytes), format_bytes(cost.workspace_bytes),
        )  # fmt: skip
