"""Farthest point sampling (FPS) in feature space (paper App. G).

Starting from one point, FPS repeatedly adds the point farthest (squared Euclidean distance)
from everything chosen so far. It spreads the sample over feature space, but greedily and
deterministically after the start, and it is drawn to outliers: App. G explains why k-DPP,
which balances diversity against coverage, does better.

Two backends give **identical indices** for the same features and start point:

- ``"torch"``: a pure-PyTorch loop doing the same tensor operations as torch-cluster's CPU
  kernel (``(x - x[j]).pow(2).sum(1)``, running ``min``, first-index ``argmax``), in place
  into preallocated buffers;
- ``"torch_cluster"``: :func:`torch_cluster.fps` (``pip install "sgs_tad[fps]"``).

``"auto"`` picks ``"torch_cluster"`` when it is installed (the same indices, without our
per-point Python overhead), else ``"torch"``.

How the two are made to agree, and what of torch-cluster is worked around:

- torch-cluster computes its count as ``ceil(ratio * N)`` in float32; we pass the float32
  ratio whose product rounds up to exactly ``num_samples``.
- Its CPU random start uses C ``rand()`` and ignores torch's seed, so we never use it: the
  start comes from our generator (or the ``start`` option), the points are rolled so the
  start is row 0, and torch-cluster runs with ``random_start=False``. Ties between equally
  far points therefore go to the first in cyclic order after the start, in both backends.
- We call it on one video at a time (no ``batch`` vector), so its silent misbehaviour on
  unsorted batch vectors cannot happen.

With fewer than ``k`` distinct points, torch-cluster would repeat indices; both backends
then return torch-cluster's distinct prefix followed by the lowest unchosen indices (in
cyclic order after the start), so the result is always ``k`` distinct indices.

Distances are computed in float32 (float64 features stay float64), on the features' device
(the identity with torch-cluster is tested on CPU). Cost: O(k·N·C).

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    >>> farthest_point_sampling(x, 2, start=0).tolist()
    [0, 3]
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from sgs_tad.samplers.base import check_features, check_request

__all__ = ["FPSSampler", "farthest_point_sampling", "has_torch_cluster"]

Backend = Literal["auto", "torch", "torch_cluster"]


def has_torch_cluster() -> bool:
    """Whether the optional torch-cluster package is importable."""
    return importlib.util.find_spec("torch_cluster") is not None


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "torch", "torch_cluster"):
        raise ValueError(
            f"unknown FPS backend {backend!r}; choose 'auto', 'torch' or 'torch_cluster'."
        )
    if backend == "auto":
        # identical results either way; torch-cluster's C++ loop saves our per-point Python
        # overhead (15-35 % of the time at N <= 1024 on CPU) and a host sync per point on a GPU
        return "torch_cluster" if has_torch_cluster() else "torch"
    if backend == "torch_cluster" and not has_torch_cluster():
        raise ImportError(
            "FPS backend 'torch_cluster' needs the torch-cluster package: "
            'pip install "sgs_tad[fps]" (build it with --no-build-isolation so it compiles '
            "against your installed torch), or use backend='torch' (identical results)."
        )
    return backend


def _fps_torch(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """FPS from row 0; ties to the lowest index (``max`` returns the first maximum)."""
    out = [0]
    buf = torch.empty_like(points)
    torch.sub(points, points[0], out=buf)
    dist = buf.pow_(2).sum(1)
    new = torch.empty_like(dist)
    for _ in range(1, num_samples):
        best, cur_t = dist.max(0)
        cur = int(cur_t)
        if float(best) == 0.0:
            # every remaining point duplicates a chosen one (chosen points sit at distance
            # exactly 0): torch-cluster would repeat an index, we take the first unchosen
            taken = set(out)
            cur = next(i for i in range(points.shape[0]) if i not in taken)
        out.append(cur)
        torch.sub(points, points[cur], out=buf)
        torch.sum(buf.pow_(2), 1, out=new)
        torch.minimum(dist, new, out=dist)
    return torch.tensor(out, dtype=torch.long)


def _cluster_ratio(num_items: int, num_samples: int) -> torch.Tensor:
    """A float32 ratio with ``ceil(float32(num_items) * ratio) == num_samples``."""
    n = torch.tensor(float(num_items), dtype=torch.float32)
    ratio = torch.tensor(num_samples / num_items, dtype=torch.float32)
    for _ in range(64):
        count = int(torch.ceil(n * ratio))
        if count == num_samples:
            return ratio
        toward = torch.tensor(0.0 if count > num_samples else 2.0, dtype=torch.float32)
        ratio = torch.nextafter(ratio, toward)
    raise RuntimeError(f"no float32 ratio gives {num_samples} of {num_items} points")


def _fps_cluster(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    import torch_cluster

    ratio = _cluster_ratio(points.shape[0], num_samples)
    return torch_cluster.fps(
        points, None, ratio.to(points.device, points.dtype), random_start=False
    )


def farthest_point_sampling(
    features: torch.Tensor,
    num_samples: int,
    *,
    start: int,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Farthest point sampling from a fixed start point.

    Args:
        features: ``[N, C]`` points (finite floats).
        num_samples: ``k`` in ``[1, N]``.
        start: index of the first point.
        backend: ``"torch"``, ``"torch_cluster"`` or ``"auto"`` (``"torch_cluster"`` when
            installed, else ``"torch"``; the two give identical indices).

    Returns:
        ``LongTensor [k]`` in selection order (``start`` first), not sorted.
    """
    num_items = features.shape[0] if features.dim() else 0
    check_request(num_items, num_samples)
    points = check_features(features, num_items, "fps")
    if not 0 <= start < num_items:
        raise ValueError(f"start must be an index in [0, {num_items}), got {start}.")
    if num_samples == 0:
        return torch.empty(0, dtype=torch.long)
    chosen = _resolve_backend(backend)
    if points.dtype != torch.float64:
        points = points.float()
    # rolling makes the start row 0 (torch-cluster's only deterministic start) while keeping
    # the cyclic order, so ties break the same way whichever backend runs
    points = torch.roll(points, -start, dims=0).contiguous()
    order = _fps_cluster(points, num_samples) if chosen == "torch_cluster" else None
    if order is None or order.unique().numel() != num_samples:
        # torch-cluster repeats indices when fewer than k points are distinct; our loop
        # gives the same indices as far as torch-cluster's are distinct, then fresh ones
        order = _fps_torch(points, num_samples)
    return (order.cpu() + start) % num_items


class FPSSampler:
    """Farthest point sampling as a :class:`~sgs_tad.samplers.Sampler` (feature-guided).

    Args:
        start: ``"random"`` (default) draws the first point uniformly from the generator;
            an ``int`` fixes it (the same start gives the same sample: FPS is deterministic
            after its first point).
        backend: ``"auto"`` | ``"torch"`` | ``"torch_cluster"``; see the module docstring.
    """

    requires_features = True

    def __init__(self, *, start: int | Literal["random"] = "random", backend: Backend = "auto"):
        if start != "random" and (isinstance(start, bool) or not isinstance(start, int)):
            raise ValueError(f"start must be 'random' or an int index, got {start!r}.")
        _resolve_backend(backend)  # fail at construction for an unknown or missing backend
        self.start = start
        self.backend = backend

    def __call__(
        self,
        num_items: int,
        num_samples: int,
        *,
        features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``num_samples`` sorted indices chosen by FPS on ``features`` ``[N, C]``."""
        check_request(num_items, num_samples)
        feats = check_features(features, num_items, "fps")
        if num_samples == 0:
            return torch.empty(0, dtype=torch.long)
        if self.start == "random":
            start = int(torch.randint(0, num_items, (1,), generator=generator).item())
        else:
            start = int(self.start)
        order = farthest_point_sampling(feats, num_samples, start=start, backend=self.backend)
        return order.sort().values

    def __repr__(self) -> str:
        return f"FPSSampler(start={self.start!r}, backend={self.backend!r})"
