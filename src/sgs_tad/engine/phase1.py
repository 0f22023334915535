"""Phase 1 of SGS: every snippet through the encoder without a graph, into one buffer.

The sampled micro-batches come first in the plan: they are phase 3's, and phase 1 captures
what phase 3 needs of them (their RNG states, kept graphs within ``keep_graphs``, kept
frozen-prefix outputs within ``reuse_frozen_prefix``). Split out of
:mod:`sgs_tad.engine.sgs`, whose :meth:`~sgs_tad.engine.sgs.SequentializedGradientSampler.encode`
and ``encode_features`` call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from sgs_tad.engine import phase
from sgs_tad.engine.keep import keep_fits
from sgs_tad.engine.memory import DeviceBytesMeter, SavedBytesMeter
from sgs_tad.engine.microbatch import MicroBatch, device_indices, gathered
from sgs_tad.engine.prefix import PrefixKeeper
from sgs_tad.engine.records import autocast_state
from sgs_tad.engine.rng import RNGState, capture_replay_state
from sgs_tad.engine.sources import SnippetSource

if TYPE_CHECKING:
    from sgs_tad.engine.sgs import SequentializedGradientSampler

__all__ = ["run_plan"]


def run_plan(
    self: SequentializedGradientSampler,
    batches: Sequence[MicroBatch],
    sources: Sequence[SnippetSource],
    lengths: Sequence[int],
    *,
    sampled: int = 0,
    capture: bool = False,
    prefix: PrefixKeeper | None = None,
) -> tuple[torch.Tensor, list[RNGState | None], dict[str, Any], list[torch.Tensor]]:
    """Run ``batches`` into a ``[B, N_max, C]`` buffer; the first ``sampled`` are phase 3's.

    A sampled micro-batch within the keep budget runs with grad and its output (with its
    graph) is returned in ``kept``; the others run without a graph, with the RNG state
    captured before each remaining sampled one when ``capture`` (after its frozen prefix,
    when ``prefix`` keeps that prefix's output for phase 3).
    """
    feats: torch.Tensor | None = None
    rng_states: list[RNGState | None] = []
    kept: list[torch.Tensor] = []
    autocast: dict[str, Any] = {}
    keeping = sampled > 0 and self.keep_graphs.enabled
    kept_snippets = kept_bytes = per_snippet = 0
    index: list[tuple[torch.Tensor, torch.Tensor]] = []
    with phase.encoding():
        for j, (batch, x) in enumerate(gathered(batches, sources, prefetch=self.prefetch)):
            keeping = keeping and j < sampled
            keeping = keeping and keep_fits(
                self.keep_graphs, len(batch), kept_snippets, kept_bytes, per_snippet
            )
            if keeping:
                counter = None
                sizing = self._sizing
                if self.keep_graphs.bytes is not None or (
                    sizing is not None and sizing["saved"] is None
                ):
                    counter = SavedBytesMeter(exclude=self._state_tensors())
                with torch.enable_grad(), counter or nullcontext():
                    out = self._run(batch, x)
                size = counter.live if counter is not None else 0
                if sizing is not None and sizing["saved"] is None:
                    sizing["saved"] = size / len(batch)
                budget = self.keep_graphs.bytes
                if budget is not None and kept_bytes + size > budget:
                    keeping = False  # measured over budget: recomputed in phase 3 instead
                    out = out.detach()
                else:
                    kept.append(out)
                    kept_snippets += len(batch)
                    kept_bytes += size
                    per_snippet = max(per_snippet, -(-size // len(batch)))
                # Nothing to replay: a kept graph is never re-run, and one dropped for the
                # budget ran with grad, so its RNG state was not captured before it.
                rng_states.append(None)
                if prefix is not None:
                    prefix.skip()
            else:
                split = 0
                if j < sampled:
                    state = capture_replay_state(self.device) if capture else None
                    if prefix is not None and prefix.fits(len(batch)):
                        with torch.no_grad():
                            x = self.encoder.forward_prefix(self._to_device(x), prefix.stages)  # type: ignore[operator]
                        split = prefix.stages
                        if prefix.offer(x) and capture:  # the trainable stages' masks
                            state = capture_replay_state(self.device)
                    elif prefix is not None:
                        prefix.skip()
                    rng_states.append(state)
                sizing = self._sizing
                if sizing is not None and sizing["workspace"] is None:
                    held = [*self._state_tensors(), x]
                    with torch.no_grad(), DeviceBytesMeter(held, device=self.device) as m:
                        out = self._run(batch, x, split)
                    sizing["workspace"] = m.peak / len(batch)
                else:
                    with torch.no_grad():
                        out = self._run(batch, x, split)
            if feats is None:
                autocast = autocast_state(out.device.type)
                feats = out.new_zeros(len(lengths), max(lengths), out.shape[1])
                index = device_indices(batches, out.device)  # one copy for the plan
            elif out.shape[1] != feats.shape[2] or out.dtype != feats.dtype:
                raise ValueError(
                    f"encoder output changed between micro-batches: [{len(batch)}, "
                    f"{out.shape[1]}] {out.dtype} after [*, {feats.shape[2]}] {feats.dtype}."
                )
            # Writing into the preallocated buffer drops `out` at the next iteration: no
            # activation of the encoder outlives its micro-batch (no graph under no_grad).
            feats[index[j]] = out.detach()
    assert feats is not None  # at least one snippet per video, checked in as_sources
    self.stats.snippets_kept = kept_snippets
    self.stats.kept_bytes = kept_bytes
    if prefix is not None:
        self.stats.snippets_prefix_kept = prefix.snippets
        self.stats.prefix_bytes = prefix.bytes
    return feats, rng_states, autocast, kept
