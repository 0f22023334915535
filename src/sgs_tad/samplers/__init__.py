"""Samplers: which snippets get their gradient (SGS) and which proposals train the detector (APS).

One small protocol (:class:`Sampler`): ``sampler(num_items, num_samples, *, features=None,
generator=None)`` returns a sorted ``LongTensor`` of ``num_samples`` distinct indices in
``[0, num_items)``, drawing every random choice from ``generator``. Look samplers up by name
with :func:`make_sampler`:

=========  ==================================================  =================
name       what it does                                        requires_features
=========  ==================================================  =================
random     uniform without replacement                         no
grid       evenly strided, random phase                        no
block      one contiguous run at a random position             no
fps        farthest point sampling in feature space            yes
kdpp       exact k-DPP with the cosine-similarity kernel       yes
=========  ==================================================  =================

The label-guided strategies of §3.5 (``iou_balanced``, ``scale_balanced``) need ground truth
and exist for proposals only: see :func:`sgs_tad.detection.proposals.sample_proposals`.

Example:
    >>> import torch
    >>> sampler = make_sampler("random")
    >>> sampler(8, 3, generator=torch.Generator().manual_seed(0)).tolist()
    [0, 4, 7]
    >>> make_sampler("grid", offset="center")(8, 4).tolist()
    [1, 3, 5, 7]
"""

from __future__ import annotations

from typing import Any, Callable

from sgs_tad.samplers.base import Sampler
from sgs_tad.samplers.fps import FPSSampler, farthest_point_sampling
from sgs_tad.samplers.heuristic import BlockSampler, GridSampler, RandomSampler
from sgs_tad.samplers.kdpp import KDPPSampler, sample_kdpp

__all__ = [
    "BlockSampler",
    "FPSSampler",
    "GridSampler",
    "KDPPSampler",
    "RandomSampler",
    "Sampler",
    "available_samplers",
    "farthest_point_sampling",
    "make_sampler",
    "sample_kdpp",
]

_REGISTRY: dict[str, Callable[..., Sampler]] = {
    "random": RandomSampler,
    "grid": GridSampler,
    "block": BlockSampler,
    "fps": FPSSampler,
    "kdpp": KDPPSampler,
}


def available_samplers() -> list[str]:
    """The names :func:`make_sampler` knows, in a stable order."""
    return list(_REGISTRY)


def make_sampler(sampler: str | Sampler | Callable[..., Any], **options: Any) -> Sampler:
    """Build a sampler from its name, or pass a sampler object through unchanged.

    Args:
        sampler: a name from :func:`available_samplers`, or an object following the
            :class:`Sampler` protocol (returned as is; a plain callable without a
            ``requires_features`` attribute is treated as feature-independent by the engine).
        **options: keyword options of the named sampler's class, e.g. ``offset="center"``
            for ``grid``, ``backend="torch"`` for ``fps``, ``eps=1e-2`` for ``kdpp``.

    Returns:
        The sampler.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        TypeError: for options given with a sampler object, or a non-callable object.
    """
    if isinstance(sampler, str):
        try:
            factory = _REGISTRY[sampler]
        except KeyError:
            raise ValueError(
                f"unknown sampler {sampler!r}; known samplers: {', '.join(_REGISTRY)} "
                "(or pass a sampler object)."
            ) from None
        return factory(**options)
    if not callable(sampler):
        raise TypeError(
            f"sampler must be a name ({', '.join(_REGISTRY)}) or a callable "
            f"sampler(num_items, num_samples, *, features, generator), got {sampler!r}."
        )
    if options:
        raise TypeError(
            f"options {sorted(options)} were given with a sampler object {sampler!r}; "
            "options apply only to a sampler built by name."
        )
    return sampler  # type: ignore[return-value]
