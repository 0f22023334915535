"""Feature-independent samplers of the paper (§3.5, Fig. 3): random, grid and block.

They look only at positions, never at features, so the SGS engine can draw their sample before
phase 1. All three cost O(num_items) or less.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> RandomSampler()(10, 3, generator=g).tolist()
    [1, 4, 7]
    >>> GridSampler(offset="center")(10, 3).tolist()
    [1, 5, 8]
    >>> BlockSampler()(10, 3, generator=g).numel()
    3
"""

from __future__ import annotations

from typing import Literal

import torch

from sgs_tad.samplers.base import check_request

__all__ = ["BlockSampler", "GridSampler", "RandomSampler"]


class RandomSampler:
    """Uniform sampling without replacement (the paper's default for snippets, §3.5).

    Every subset of size ``num_samples`` is equally likely.
    """

    requires_features = False

    def __call__(
        self,
        num_items: int,
        num_samples: int,
        *,
        features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``num_samples`` sorted distinct indices drawn uniformly from ``num_items``."""
        check_request(num_items, num_samples)
        perm = torch.randperm(num_items, generator=generator)
        return perm[:num_samples].sort().values

    def __repr__(self) -> str:
        return "RandomSampler()"


class GridSampler:
    """Evenly strided sampling: a grid of stride ``num_items / num_samples``.

    Index ``i`` of the sample is ``floor(i * num_items / num_samples + offset)``, with the
    offset in ``[0, num_items / num_samples)`` (computed in exact integer arithmetic, so the
    indices are always distinct and in range).

    Args:
        offset: ``"random"`` (default) draws the offset uniformly from the generator (one of
            ``num_items`` equally spaced phases), so that over many steps every item gets its
            turn; ``"center"`` uses half a stride, deterministic (what one wants for
            evaluation or debugging).
    """

    requires_features = False

    def __init__(self, *, offset: Literal["random", "center"] = "random") -> None:
        if offset not in ("random", "center"):
            raise ValueError(f"offset must be 'random' or 'center', got {offset!r}.")
        self.offset = offset

    def __call__(
        self,
        num_items: int,
        num_samples: int,
        *,
        features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``num_samples`` evenly strided indices in ``[0, num_items)``."""
        check_request(num_items, num_samples)
        if num_samples == 0:
            return torch.empty(0, dtype=torch.long)
        # phase o in [0, num_items): index_i = floor((i * N + o) / k); the last one is at most
        # floor((k * N - 1) / k) = N - 1, and consecutive ones differ by >= floor(N / k) >= 1.
        if self.offset == "random":
            phase = int(torch.randint(0, num_items, (1,), generator=generator).item())
        else:
            phase = num_items // 2
        i = torch.arange(num_samples, dtype=torch.long)
        return torch.div(i * num_items + phase, num_samples, rounding_mode="floor")

    def __repr__(self) -> str:
        return f"GridSampler(offset={self.offset!r})"


class BlockSampler:
    """One contiguous run of ``num_samples`` items at a uniformly random position.

    The start is uniform in ``[0, num_items - num_samples]``. The paper finds it the worst of
    the heuristics (Tables 4, 8): neighbouring snippets carry redundant gradient.
    """

    requires_features = False

    def __call__(
        self,
        num_items: int,
        num_samples: int,
        *,
        features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``num_samples`` consecutive indices starting at a random position."""
        check_request(num_items, num_samples)
        start = int(
            torch.randint(0, num_items - num_samples + 1, (1,), generator=generator).item()
        )
        return torch.arange(start, start + num_samples, dtype=torch.long)

    def __repr__(self) -> str:
        return "BlockSampler()"
