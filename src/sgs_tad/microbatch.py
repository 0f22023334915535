"""Packing the snippets of several videos into micro-batches of at most K, and back.

A *slot* is one snippet of one video: ``(video, index)``. The engine decides an order of slots,
cuts it into consecutive micro-batches of at most K slots, and for each micro-batch asks every
video's :class:`~sgs_tad.sources.SnippetSource` only for its own snippets. Features are written
back to their ``[B, N_max]`` position, so the order in which the encoder saw the snippets never
leaks into the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .sources import SnippetSource, TensorSource

__all__ = ["MicroBatch", "as_sources", "num_sampled", "pack"]


def num_sampled(num_snippets: int, ratio: float) -> int:
    """Snippets of a video of ``num_snippets`` that phase 3 back-propagates, for ratio γ.

    ``n = 0`` for γ = 0, otherwise ``n = min(N, max(1, ceil(γ·N)))``; ``γ·N`` is rounded to 9
    decimals first so that, e.g., γ = 0.3, N = 10 gives 3 and not 4.

    Example:
        >>> [num_sampled(128, r) for r in (0.0, 0.01, 0.3, 1.0)]
        [0, 2, 39, 128]
    """
    if ratio <= 0:
        return 0
    return min(num_snippets, max(1, math.ceil(round(ratio * num_snippets, 9))))


@dataclass(frozen=True)
class MicroBatch:
    """One encoder call: the slots it holds, in the order the encoder sees them.

    Attributes:
        videos: ``[m]`` video index of each row.
        positions: ``[m]`` snippet index of each row within its video.
    """

    videos: torch.Tensor
    positions: torch.Tensor

    def __len__(self) -> int:
        return int(self.videos.numel())

    def gather(self, sources: Sequence[SnippetSource]) -> torch.Tensor:
        """Fetch this micro-batch's snippets ``[m, *S]``, one request per video run."""
        parts: list[torch.Tensor] = []
        videos = self.videos.tolist()
        start = 0
        # Consecutive rows of the same video become one request, so a lazy source decodes a
        # contiguous run at once instead of one snippet at a time.
        while start < len(videos):
            stop = start
            while stop < len(videos) and videos[stop] == videos[start]:
                stop += 1
            parts.append(sources[videos[start]].get_snippets(self.positions[start:stop]))
            start = stop
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def pack(videos: torch.Tensor, positions: torch.Tensor, size: int) -> list[MicroBatch]:
    """Cut an order of slots into consecutive micro-batches of at most ``size`` slots."""
    return [
        MicroBatch(videos[i : i + size], positions[i : i + size])
        for i in range(0, int(videos.numel()), size)
    ]


def as_sources(snippets: object) -> list[SnippetSource]:
    """Normalise the engine's input to one :class:`SnippetSource` per video.

    Accepts a tensor ``[B, N, *S]``, a list/tuple of tensors ``[N_i, *S]``, or a list/tuple of
    snippet sources. Raises ``TypeError``/``ValueError`` naming what is wrong and the fix.
    """
    if isinstance(snippets, torch.Tensor):
        if snippets.dim() < 2:
            raise ValueError(
                f"snippets tensor must be [B, N, *S] (batch, snippets, snippet shape); got shape "
                f"{tuple(snippets.shape)}. For a single video pass snippets.unsqueeze(0)."
            )
        sources: list[SnippetSource] = [TensorSource(v) for v in snippets.unbind(0)]
    elif isinstance(snippets, (list, tuple)):
        if not snippets:
            raise ValueError("snippets is an empty list: pass at least one video.")
        sources = []
        shape: tuple[int, ...] | None = None
        for i, item in enumerate(snippets):
            if isinstance(item, torch.Tensor):
                if item.dim() < 1:
                    raise ValueError(f"video {i} is a 0-d tensor; each video must be [N_i, *S].")
                if shape is None:
                    shape = tuple(item.shape[1:])
                elif tuple(item.shape[1:]) != shape:
                    raise ValueError(
                        f"video {i} has snippet shape {tuple(item.shape[1:])} but video 0 has "
                        f"{shape}; all videos must share the snippet shape S of [N_i, *S]. "
                        "Resize or crop them to a common shape in the data pipeline."
                    )
                sources.append(TensorSource(item))
            elif isinstance(item, SnippetSource):
                sources.append(item)
            else:
                raise TypeError(
                    f"video {i} is a {type(item).__name__}; expected a tensor [N_i, *S] or a "
                    "SnippetSource (an object with __len__ and get_snippets(indices))."
                )
    elif isinstance(snippets, SnippetSource):
        raise TypeError(
            "snippets is a single SnippetSource; wrap it in a list ([source]) for a batch of one."
        )
    else:
        raise TypeError(
            f"snippets is a {type(snippets).__name__}; expected a tensor [B, N, *S], a list of "
            "tensors [N_i, *S], or a list of SnippetSource objects."
        )
    for i, source in enumerate(sources):
        if len(source) < 1:
            raise ValueError(
                f"video {i} has zero snippets; every video needs at least one. Drop empty videos "
                "in the data pipeline (or check the decoder: the file may be empty)."
            )
    return sources
