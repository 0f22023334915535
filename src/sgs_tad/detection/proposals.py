"""The dense proposal map of §3.4 and Action Proposal Sampling (APS).

A video of ``T`` snippets has one candidate proposal per start/end pair ``(s, e)`` with
``0 <= s <= e < T`` and duration index ``d = e - s < D`` (``D`` = maximum duration in snippets).
The map is laid out like BMN's: a ``[D, T]`` grid whose row is the duration index ``d`` and
whose column is the start ``s``; cell ``(d, s)`` is valid when ``s + d < T``. The ``P`` valid
proposals are numbered in row-major order of that grid (``valid_mask.nonzero()`` order), and
every tensor ``[P, ...]`` in this module follows that numbering. Snippet ``i`` covers
``[i / T, (i + 1) / T)`` of the video, so proposal ``(s, e)`` has normalised coordinates
``[s / T, (e + 1) / T]``.

``T = D = 128`` (ActivityNet) gives ``P = 8,256``; ``T = 128, D = 64`` (THUMOS) gives 6,176.

APS (:func:`sample_proposals`) trains the proposal evaluation module on a subset of the map.
Counts (``n = floor(ratio * P)``, at least 1), with the rules that give them:

- ``random``, ``fps``, ``kdpp`` and any sampler object: exactly ``n``
  (ActivityNet, ratio 0.06: 495; THUMOS, ratio 0.1: 617).
- ``grid``: a fixed lattice on the map with step ``sqrt(1 / ratio)`` starting at 1 on both
  axes: rows ``round(arange(1, D, step))``, columns ``round(arange(1, T, step))``, kept where
  valid. Deterministic; the count follows from the lattice (ActivityNet: 496; THUMOS: 610).
  If no lattice point is valid (tiny maps) the lattice starts at 0 instead.
- ``block``: a square of side ``w = floor(sqrt(n))`` cells (ActivityNet: 22² = 484) at a
  position drawn uniformly among those where the whole square lies in the valid region; ``w``
  shrinks until such a position exists.
- ``iou_balanced`` / ``scale_balanced``: exactly ``n``, equal counts (within one) from three
  bins, see :func:`sample_proposals`.

``grid`` and ``block`` keep their shapes at ``ratio = 1`` and so do not cover the whole map;
use ``random`` for that.

Example:
    >>> import torch
    >>> pmap = ProposalMap(128, 128)
    >>> pmap.num_proposals
    8256
    >>> g = torch.Generator().manual_seed(0)
    >>> [sample_proposals(pmap, 0.06, s, generator=g).numel() for s in ("random", "grid")]
    [495, 496]
    >>> sample_proposals(pmap, 0.06, "block", generator=g).numel()
    484
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from sgs_tad.samplers import Sampler, make_sampler
from sgs_tad.samplers.balanced import balanced_sample

__all__ = [
    "PROPOSAL_STRATEGIES",
    "ProposalMap",
    "num_sampled_proposals",
    "proposal_descriptors",
    "proposal_iou",
    "sample_proposals",
]

#: Strategy names :func:`sample_proposals` accepts (any snippet sampler name works too).
PROPOSAL_STRATEGIES = ("random", "grid", "block", "fps", "kdpp", "iou_balanced", "scale_balanced")

#: Bin edges of the label-guided strategies (§3.5): IoU bins [0, .3), [.3, .7), [.7, 1] and
#: duration bins (relative to the video) < .3, [.3, .7], > .7.
LOW, HIGH = 0.3, 0.7


class ProposalMap:
    """Valid start/end pairs of a ``T``-snippet video with maximum duration ``D`` snippets.

    Args:
        num_snippets: ``T`` >= 1.
        max_duration: ``D`` in ``[1, T]``: the longest proposal spans ``D`` snippets.

    Attributes:
        num_snippets: ``T``.
        max_duration: ``D``.
        valid_mask: bool ``[D, T]``, ``valid_mask[d, s]`` is ``s + d < T``.
        starts: ``LongTensor [P]``, start snippet of each valid proposal.
        ends: ``LongTensor [P]``, end snippet (inclusive), ``ends - starts < D``.
        coords: float ``[P, 2]``, normalised ``[s / T, (e + 1) / T]``.
        num_proposals: ``P``.
    """

    def __init__(self, num_snippets: int, max_duration: int) -> None:
        for name, value in (("num_snippets", num_snippets), ("max_duration", max_duration)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}.")
        if num_snippets < 1 or not 1 <= max_duration <= num_snippets:
            raise ValueError(
                f"need num_snippets >= 1 and 1 <= max_duration <= num_snippets, got "
                f"num_snippets={num_snippets}, max_duration={max_duration}."
            )
        self.num_snippets = num_snippets
        self.max_duration = max_duration
        d = torch.arange(max_duration).view(-1, 1)
        s = torch.arange(num_snippets).view(1, -1)
        self.valid_mask = (s + d) < num_snippets
        rows, cols = self.valid_mask.nonzero(as_tuple=True)
        self.starts = cols
        self.ends = cols + rows
        self.coords = torch.stack([self.starts, self.ends + 1], dim=1).float() / num_snippets
        self.num_proposals = int(self.starts.numel())

    def __repr__(self) -> str:
        return (
            f"ProposalMap(num_snippets={self.num_snippets}, max_duration={self.max_duration}, "
            f"num_proposals={self.num_proposals})"
        )

    @property
    def durations(self) -> torch.Tensor:
        """``LongTensor [P]``: length in snippets, ``ends - starts + 1``."""
        return self.ends - self.starts + 1

    def to_map(self, values: torch.Tensor, *, fill: float = 0.0) -> torch.Tensor:
        """Scatter per-proposal values ``[P, ...]`` onto the map ``[D, T, ...]``.

        Invalid cells get ``fill``.
        """
        if values.dim() < 1 or values.shape[0] != self.num_proposals:
            raise ValueError(
                f"to_map needs values of shape [P={self.num_proposals}, ...], got "
                f"{tuple(values.shape)}."
            )
        out = values.new_full((self.max_duration, self.num_snippets, *values.shape[1:]), fill)
        out[self.valid_mask.to(values.device)] = values
        return out

    def from_map(self, dense: torch.Tensor) -> torch.Tensor:
        """Gather the valid cells of a map ``[D, T, ...]`` into ``[P, ...]``."""
        if dense.dim() < 2 or tuple(dense.shape[:2]) != tuple(self.valid_mask.shape):
            raise ValueError(
                f"from_map needs a map of shape [D={self.max_duration}, "
                f"T={self.num_snippets}, ...], got {tuple(dense.shape)}."
            )
        return dense[self.valid_mask.to(dense.device)]

    def mask_of(self, indices: torch.Tensor) -> torch.Tensor:
        """Bool map ``[D, T]`` that is ``True`` at the proposals ``indices`` (into ``[P]``)."""
        flat = torch.zeros(self.num_proposals, dtype=torch.bool)
        flat[indices.cpu()] = True
        return self.to_map(flat, fill=False)


def proposal_iou(pmap: ProposalMap, segments: torch.Tensor) -> torch.Tensor:
    """Temporal IoU of every valid proposal with every ground-truth segment.

    Args:
        pmap: the proposal map.
        segments: ``[G, 2]`` normalised ``[start, end]`` (same convention as ``pmap.coords``).

    Returns:
        ``[P, G]`` float IoU in ``[0, 1]`` (0 for a zero-length union).
    """
    segments = _check_segments(segments)
    box = pmap.coords.to(segments.device, segments.dtype)
    inter = (
        torch.minimum(box[:, None, 1], segments[None, :, 1])
        - torch.maximum(box[:, None, 0], segments[None, :, 0])
    ).clamp(min=0)
    union = (box[:, 1] - box[:, 0])[:, None] + (segments[:, 1] - segments[:, 0])[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def proposal_descriptors(
    snippet_features: torch.Tensor,
    pmap: ProposalMap,
    *,
    mode: Literal["mean", "mean_boundary"] = "mean_boundary",
) -> torch.Tensor:
    """A cheap per-proposal feature for feature-guided APS (FPS, k-DPP).

    Computed from the snippet features with prefix sums in O(P·C), so APS does not need the
    detector's RoI features for all ``P`` proposals.

    Args:
        snippet_features: ``[T, C]`` features of the video's snippets.
        pmap: the proposal map (``T`` must match).
        mode: ``"mean"``: the mean feature over the proposal's snippets ``[P, C]``;
            ``"mean_boundary"`` (default): that mean concatenated with the start and end
            snippets' features ``[P, 3C]``, so proposals with the same content but
            different boundaries differ.

    Returns:
        ``[P, C]`` or ``[P, 3C]``, detached, in the features' dtype.
    """
    feats = snippet_features.detach()
    if feats.dim() != 2 or feats.shape[0] != pmap.num_snippets:
        raise ValueError(
            f"snippet_features must be [T={pmap.num_snippets}, C], got {tuple(feats.shape)}; "
            "pass one video's features with snippets along the first axis."
        )
    if mode not in ("mean", "mean_boundary"):
        raise ValueError(f"mode must be 'mean' or 'mean_boundary', got {mode!r}.")
    # prefix sums in float64: a long video's running sum loses digits in float32
    prefix = feats.new_zeros(feats.shape[0] + 1, feats.shape[1], dtype=torch.float64)
    prefix[1:] = feats.double().cumsum(0)
    starts, ends = pmap.starts.to(feats.device), pmap.ends.to(feats.device)
    lengths = pmap.durations.to(feats.device, torch.float64)
    mean = (prefix[ends + 1] - prefix[starts]) / lengths[:, None]
    mean = mean.to(feats.dtype)
    if mode == "mean":
        return mean
    return torch.cat([mean, feats[starts], feats[ends]], dim=1)


def num_sampled_proposals(num_proposals: int, ratio: float) -> int:
    """``floor(ratio * P)`` (with a 1e-9 guard against float error), at least 1."""
    return max(1, math.floor(ratio * num_proposals + 1e-9))


def sample_proposals(
    pmap: ProposalMap,
    ratio: float,
    strategy: str | Sampler = "random",
    *,
    generator: torch.Generator | None = None,
    features: torch.Tensor | None = None,
    gt_segments: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """Action Proposal Sampling: choose the proposals that train the detector (§3.4).

    Args:
        pmap: the proposal map.
        ratio: fraction of the ``P`` valid proposals, in ``(0, 1]`` (paper: 0.06).
        strategy: one of :data:`PROPOSAL_STRATEGIES`, or a sampler object. Counts and rules are
            in the module docstring. ``iou_balanced`` splits the proposals by their best IoU
            with ``gt_segments`` into [0, 0.3), [0.3, 0.7), [0.7, 1]; ``scale_balanced`` by
            duration relative to the video, ``(e - s + 1) / T``: < 0.3, [0.3, 0.7], > 0.7.
            Both draw equal counts per bin (within one; which bins get the remainder is
            random), uniformly within a bin; a bin with too few members gives all it has and
            the shortfall is drawn from the other bins, equally again.
        generator: source of every random choice.
        features: ``[P, C]`` per-proposal features for ``fps`` / ``kdpp`` (e.g.
            :func:`proposal_descriptors`).
        gt_segments: ``[G, 2]`` normalised ground truth, for ``iou_balanced``.
        **options: passed to the sampler (e.g. ``backend=`` for ``fps``/``kdpp``).

    Returns:
        Sorted ``LongTensor`` of indices into the ``P`` valid proposals (``pmap.starts[idx]``,
        ``pmap.coords[idx]``, ``pmap.mask_of(idx)``).
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a float in (0, 1], got {ratio!r}.")
    num = num_sampled_proposals(pmap.num_proposals, float(ratio))
    if strategy == "grid":
        _no_options(strategy, options)
        return _grid(pmap, float(ratio))
    if strategy == "block":
        _no_options(strategy, options)
        return _block(pmap, num, generator)
    if strategy == "iou_balanced":
        _no_options(strategy, options)
        if gt_segments is None:
            raise ValueError("strategy 'iou_balanced' needs gt_segments=[G, 2] (normalised).")
        best = proposal_iou(pmap, gt_segments)
        best_iou = best.max(dim=1).values if best.shape[1] else best.new_zeros(len(best))
        bins = (best_iou >= LOW).long() + (best_iou >= HIGH).long()
        return balanced_sample(bins, 3, num, generator=generator)
    if strategy == "scale_balanced":
        _no_options(strategy, options)
        rel = pmap.durations.double() / pmap.num_snippets
        bins = (rel >= LOW).long() + (rel > HIGH).long()
        return balanced_sample(bins, 3, num, generator=generator)
    if isinstance(strategy, str) and strategy not in PROPOSAL_STRATEGIES:
        raise ValueError(
            f"unknown proposal sampling strategy {strategy!r}; known: "
            f"{', '.join(PROPOSAL_STRATEGIES)} (or pass a sampler object)."
        )
    sampler = make_sampler(strategy, **options)
    return sampler(pmap.num_proposals, num, features=features, generator=generator)


def _no_options(strategy: str, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"strategy {strategy!r} takes no options, got {sorted(options)}.")


def _check_segments(segments: torch.Tensor) -> torch.Tensor:
    if not isinstance(segments, torch.Tensor):
        segments = torch.as_tensor(segments, dtype=torch.float32)
    if segments.dim() != 2 or segments.shape[1] != 2:
        raise ValueError(
            f"segments must be [G, 2] normalised [start, end], got {tuple(segments.shape)}."
        )
    if not segments.is_floating_point():
        segments = segments.float()
    if not bool(torch.isfinite(segments).all()) or bool((segments[:, 1] < segments[:, 0]).any()):
        raise ValueError("segments must be finite with end >= start (normalised to [0, 1]).")
    return segments


def _index_of(pmap: ProposalMap, mask: torch.Tensor) -> torch.Tensor:
    """Indices into ``[P]`` of the True cells of a ``[D, T]`` mask (valid cells only)."""
    return pmap.from_map(mask).nonzero(as_tuple=True)[0]


def _grid(pmap: ProposalMap, ratio: float) -> torch.Tensor:
    step = math.sqrt(1.0 / ratio)
    for origin in (1, 0):
        rows = torch.arange(origin, pmap.max_duration, step, dtype=torch.float64).round().long()
        cols = torch.arange(origin, pmap.num_snippets, step, dtype=torch.float64).round().long()
        # rounding can land one past the edge; such points are invalid anyway
        rows, cols = rows[rows < pmap.max_duration], cols[cols < pmap.num_snippets]
        mask = torch.zeros_like(pmap.valid_mask)
        mask[rows.view(-1, 1), cols.view(1, -1)] = True
        idx = _index_of(pmap, mask & pmap.valid_mask)
        if idx.numel():
            return idx
    raise AssertionError("unreachable: the origin-0 lattice contains proposal (0, 0)")


def _block(pmap: ProposalMap, num: int, generator: torch.Generator | None) -> torch.Tensor:
    T, D = pmap.num_snippets, pmap.max_duration
    side = max(1, math.isqrt(num))
    while True:
        # top-left (d0, s0) keeps the square valid iff d0 + side <= D and
        # (d0 + side - 1) + (s0 + side - 1) < T, i.e. s0 <= T - 2 * side + 1 - d0.
        d0 = torch.arange(max(0, D - side + 1))
        room = (T - 2 * side + 2 - d0).clamp(min=0)
        total = int(room.sum())
        if total > 0:
            break
        side -= 1
    pick = int(torch.randint(0, total, (1,), generator=generator).item())
    cum = room.cumsum(0)
    row = int(torch.searchsorted(cum, torch.tensor(pick), right=True))
    col = pick - (int(cum[row - 1]) if row > 0 else 0)
    mask = torch.zeros_like(pmap.valid_mask)
    mask[row : row + side, col : col + side] = True
    return _index_of(pmap, mask)
