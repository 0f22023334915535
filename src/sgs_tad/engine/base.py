"""The engine seam: what :class:`~sgs_tad.SGSTrainer` needs from whatever encodes the snippets.

An *engine* turns a batch of snippets into features ``[B, N_max, C]`` for the detector and,
after the detector's backward, puts the encoder's gradient into ``.grad``. Two ship:

* :class:`~sgs_tad.SequentializedGradientSampler`: SGS, the memory of K snippets.
* :class:`EndToEnd`: the plain end-to-end training SGS replaces (every snippet of the batch in
  one graph), optionally with temporal checkpointing (OpenTAD's way). It is the baseline of the
  main job's ``--naive``, of the benchmarks and of the equivalence tests.

Both share :meth:`Engine.encode_features`, phase 1 alone (no graph, no sample), which
evaluation and inference use.

Example:
    >>> import torch
    >>> from torch import nn
    >>> engine = EndToEnd(nn.Linear(6, 4))
    >>> feats = engine.encode([torch.randn(3, 6), torch.randn(5, 6)])   # padded [B, N_max, C]
    >>> feats.shape, feats.requires_grad, engine.trains_encoder
    (torch.Size([2, 5, 4]), True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sgs_tad.engine.heap import HeapTrimmer
from sgs_tad.engine.microbatch import MicroBatch, as_sources, check_features, plan_encode
from sgs_tad.engine.sources import SnippetSource

__all__ = ["EndToEnd", "Engine"]


@runtime_checkable
class Engine(Protocol):
    """What the trainer calls; :class:`~sgs_tad.SequentializedGradientSampler` and
    :class:`EndToEnd` implement it, and so may your own.

    Attributes:
        encoder: The module whose parameters the engine trains.
    """

    encoder: nn.Module

    @property
    def device(self) -> torch.device:
        """Where the snippets go (and where the trainer puts its own tensors)."""
        ...

    @property
    def trains_encoder(self) -> bool:
        """Whether a training step gives the encoder a gradient (``False``: frozen)."""
        ...

    def encode(self, snippets: Any) -> torch.Tensor:
        """Training forward: features ``[B, N_max, C]`` through which the loss back-propagates."""
        ...

    def backward(self, snippets: Any, feats: torch.Tensor) -> None:
        """After ``loss.backward()``: whatever the engine still owes the encoder's ``.grad``."""
        ...

    def encode_features(self, snippets: Any) -> torch.Tensor:
        """Phase 1 alone, no graph: features ``[B, N_max, C]`` for evaluation and inference."""
        ...

    def manual_seed(self, seed: int) -> None:
        """Seed the engine's own randomness (the snippet sampler)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """State a resume must restore (random streams)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


class EndToEnd:
    """Plain end-to-end training: every snippet of the batch in one autograd graph.

    This is what SGS replaces, kept as the reference for memory, time and accuracy. Its
    encoder gradient flows through the graph of :meth:`encode`'s output during
    ``loss.backward()``; :meth:`backward` has nothing left to do.

    Args:
        encoder: Maps snippets ``[M, *S]`` to features ``[M, C]`` (after ``pool``).
        micro_batch_size: Snippets per encoder call. ``None`` (default) runs each batch in one
            call, as naive training does. The graph of every call is kept either way, so memory
            grows with the batch's snippets; only the transient peak of one call shrinks.
        checkpoint: Wrap each call in non-reentrant :func:`torch.utils.checkpoint.checkpoint`
            (temporal checkpointing, as OpenTAD does): only each call's input is kept and the
            forward is recomputed during the backward.
        pool: Optional callable applied to the encoder output (e.g. global average pooling).
        device: Where snippets are moved before each call (default: the encoder's device).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        micro_batch_size: int | None = None,
        checkpoint: bool = False,
        pool: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
        if micro_batch_size is not None and (
            isinstance(micro_batch_size, bool)
            or not isinstance(micro_batch_size, int)
            or micro_batch_size < 1
        ):
            raise ValueError(
                f"micro_batch_size must be None (the whole batch in one call) or an int >= 1, "
                f"got {micro_batch_size!r}."
            )
        if checkpoint and micro_batch_size is None:
            raise ValueError(
                "checkpoint=True needs micro_batch_size=K: checkpointing one call over the "
                "whole batch saves nothing. Pass e.g. micro_batch_size=4."
            )
        self.encoder = encoder
        self.micro_batch_size = micro_batch_size
        self.checkpoint = checkpoint
        self.pool = pool
        self._device = torch.device(device) if device is not None else None
        self._trim_heap = HeapTrimmer()  # at most once a second, as SGS does

    @property
    def device(self) -> torch.device:
        """``device=...``, else the encoder's first parameter's device, else the CPU."""
        if self._device is not None:
            return self._device
        for p in self.encoder.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def trains_encoder(self) -> bool:
        """Always ``True``: the encoder is in the graph."""
        return True

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        return self.pool(out) if self.pool is not None else out

    def _forward(self, batch: MicroBatch, sources: Sequence[SnippetSource]) -> torch.Tensor:
        x = batch.gather(sources)
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)
        if self.checkpoint and torch.is_grad_enabled():
            out = checkpoint(self._call, x, use_reentrant=False)
        else:
            out = self._call(x)
        out = check_features(out, len(batch))
        return out

    def encode(self, snippets: Any) -> torch.Tensor:
        """Features ``[B, N_max, C]`` with the encoder's graph (padding rows are zero).

        Args:
            snippets: A tensor ``[B, N, *S]``, a list of tensors ``[N_i, *S]`` or of
                :class:`~sgs_tad.engine.sources.SnippetSource`.
        """
        sources = as_sources(snippets)
        lengths = [len(s) for s in sources]
        size = self.micro_batch_size or sum(lengths)
        batches = plan_encode(lengths, size).phase1
        outs = [self._forward(b, sources) for b in batches]
        flat = torch.cat(outs) if len(outs) > 1 else outs[0]
        videos = torch.cat([b.videos for b in batches]).to(flat.device)
        positions = torch.cat([b.positions for b in batches]).to(flat.device)
        feats = flat.new_zeros(len(lengths), max(lengths), flat.shape[1])
        # Out of place, so the graph runs from every row back to its encoder call.
        return feats.index_put((videos, positions), flat)

    def encode_features(self, snippets: Any) -> torch.Tensor:
        """:meth:`encode` without a graph."""
        with torch.no_grad():
            return self.encode(snippets)

    def backward(self, snippets: Any, feats: torch.Tensor) -> None:
        """Nothing to compute: ``loss.backward()`` already reached the encoder through the
        graph. On a CPU device the freed heap memory is given back to the system, as
        :class:`~sgs_tad.SequentializedGradientSampler` does (see :mod:`sgs_tad.engine.heap`)."""
        if self.device.type == "cpu":
            self._trim_heap()

    def manual_seed(self, seed: int) -> None:
        """Nothing to seed: the engine draws no sample."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Empty: the engine keeps no state between batches."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts the empty state of :meth:`state_dict`."""
        return None
