"""From a detector's per-proposal outputs to ActivityNet-format detections.

ETAD's inference (paper App. A.4), one video at a time, each step a function here:

1. average the refined boxes of the cascade stages (:func:`average_stages`);
2. keep proposals whose start falls on a likely start and whose end on a likely end
   (:func:`select_by_boundaries`, the boundary selection of BMN);
3. score each proposal ``p = p_s * p_e * p_iou`` (:func:`proposal_scores`);
4. Gaussian soft-NMS, keeping the top ``k`` (:func:`soft_nms`);
5. fuse with video-level class scores (top-2 classes, score product) if a classifier's scores
   are given, else label everything with one class-agnostic label; convert to seconds
   (:func:`detections_from_proposals` does 4 and 5).

Videos cut into sliding windows (THUMOS, :mod:`sgs_tad.data.windows`) go through these steps
one window at a time, with the window's ``offset`` so that the detections are in seconds of the
video; :func:`merge_window_detections` then joins the windows of a video (soft-NMS per label
again, where the overlap of two windows gave the same action twice).

Segments are ``[P, 2]`` tensors of (start, end) normalised to ``[0, 1]`` of the video (or of
the window, with ``offset``/``duration`` describing the window).

Example:
    >>> import torch
    >>> T = 8
    >>> start_prob = torch.tensor([0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    >>> end_prob = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.3])
    >>> stages = torch.tensor([[[0.0, 0.5], [0.0, 1.0], [0.5, 1.0]]]).repeat(3, 1, 1)  # [S, P, 2]
    >>> boxes = average_stages(stages)
    >>> keep = select_by_boundaries(boxes, start_prob, end_prob)
    >>> keep.tolist()  # the third box starts at snippet 4, not a start candidate
    [True, True, False]
    >>> p = proposal_scores(torch.tensor([0.9, 0.9, 0.5]), torch.tensor([0.8, 0.3, 0.5]),
    ...                     torch.tensor([0.9, 0.5, 0.5]))
    >>> dets = detections_from_proposals(boxes[keep], p[keep], duration=20.0)
    >>> [(d["segment"], d["label"]) for d in dets]
    [([0.0, 10.0], 'action'), ([0.0, 20.0], 'action')]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "average_stages",
    "boundary_mask",
    "detections_from_proposals",
    "fuse_class_scores",
    "merge_window_detections",
    "proposal_scores",
    "segment_iou",
    "select_by_boundaries",
    "soft_nms",
    "to_seconds",
]


def boundary_mask(prob: Tensor, *, ratio: float = 0.5) -> Tensor:
    """Locations that are a local peak or above ``ratio`` times the maximum.

    A peak is strictly higher than both neighbours, the sequence being padded with zeros
    (so the first and last location can be peaks), as in BMN and ETAD.

    Args:
        prob: ``[..., T]`` start (or end) probabilities.
        ratio: relative height above which every location is kept.

    Returns:
        ``[..., T]`` bool.
    """
    _check_tensor(prob, "prob", min_dim=1)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio={ratio!r} must lie in [0, 1] (ETAD uses 0.5)")
    padded = torch.nn.functional.pad(prob, (1, 1))
    peak = (prob > padded[..., :-2]) & (prob > padded[..., 2:])
    high = prob > ratio * prob.amax(dim=-1, keepdim=True)
    return peak | high


def select_by_boundaries(
    segments: Tensor, start_prob: Tensor, end_prob: Tensor, *, ratio: float = 0.5
) -> Tensor:
    """Which proposals start at a likely start and end at a likely end.

    The snippet of a normalised time ``x`` is ``floor(x * T)`` clipped to ``[0, T - 1]``.
    Snippet 0 always counts as a start and snippet ``T - 1`` as an end (BMN, ETAD), so a
    proposal covering the whole video is never dropped for lack of a boundary peak.

    Args:
        segments: ``[P, 2]`` normalised (start, end); ETAD checks the refined boxes.
        start_prob: ``[T]`` startness.
        end_prob: ``[T]`` endness.
        ratio: see :func:`boundary_mask`.

    Returns:
        ``[P]`` bool.
    """
    _check_segments(segments)
    _check_tensor(start_prob, "start_prob", dim=1)
    if end_prob.shape != start_prob.shape:
        raise ValueError(
            f"end_prob has shape {tuple(end_prob.shape)}, start_prob {tuple(start_prob.shape)}; "
            "both must be [T]"
        )
    t = start_prob.shape[0]
    starts = boundary_mask(start_prob, ratio=ratio)
    ends = boundary_mask(end_prob, ratio=ratio)
    starts[0] = True
    ends[-1] = True
    index = torch.floor(segments.detach() * t).clamp(0, t - 1).long()
    return starts[index[:, 0]] & ends[index[:, 1]]


def proposal_scores(start_prob: Tensor, end_prob: Tensor, iou_prob: Tensor) -> Tensor:
    """ETAD's proposal confidence ``p = p_s * p_e * p_iou`` (App. A.4).

    Args:
        start_prob: ``[P]`` probability that the proposal's start is a true start.
        end_prob: ``[P]`` same for the end.
        iou_prob: ``[P]`` predicted IoU with the ground truth.

    Returns:
        ``[P]``.
    """
    for name, value in (("end_prob", end_prob), ("iou_prob", iou_prob)):
        if value.shape != start_prob.shape:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, start_prob {tuple(start_prob.shape)}; "
                "all three must be [P]"
            )
    return start_prob * end_prob * iou_prob


def average_stages(boxes: Tensor | Sequence[Tensor]) -> Tensor:
    """Mean of the refined boxes of the cascade stages.

    Args:
        boxes: ``[S, P, 2]``, or a sequence of ``S`` tensors ``[P, 2]``.

    Returns:
        ``[P, 2]``.
    """
    stacked = boxes if isinstance(boxes, Tensor) else torch.stack(list(boxes))
    if stacked.dim() != 3 or stacked.shape[-1] != 2 or stacked.shape[0] == 0:
        raise ValueError(
            f"boxes have shape {tuple(stacked.shape)}, expected [S, P, 2] with S >= 1 stages"
        )
    return stacked.mean(dim=0)


def segment_iou(a: Tensor, b: Tensor) -> Tensor:
    """Temporal IoU of every segment of ``a`` with every segment of ``b``.

    Args:
        a: ``[N, 2]``.
        b: ``[M, 2]``.

    Returns:
        ``[N, M]``; 0 where both segments have zero length.
    """
    inter = (
        torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    ).clamp(min=0)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def soft_nms(
    segments: Tensor,
    scores: Tensor,
    *,
    sigma: float = 0.35,
    iou_threshold: float = 0.0,
    top_k: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian soft-NMS: pick the best, decay the scores of those overlapping it, repeat.

    Each pick multiplies the score of every remaining segment whose IoU with the pick
    exceeds ``iou_threshold`` by ``exp(-IoU**2 / sigma)``. The defaults are ETAD's
    ActivityNet settings. Equal scores go to the lower index.

    It runs on the CPU whatever the inputs' device: each pick reads its index back to the
    host, which on a GPU would be a device sync per kept segment, for work of a few hundred
    numbers. Device inputs are copied to the CPU once and the results copied back.

    Args:
        segments: ``[P, 2]``.
        scores: ``[P]``, non-negative.
        sigma: width of the Gaussian decay; smaller suppresses more.
        iou_threshold: overlaps at or below it are not decayed.
        top_k: how many segments to keep at most.

    Returns:
        ``(segments [K, 2], scores [K], indices [K])`` in the order picked, with the decayed
        scores and the indices into the input; ``K = min(top_k, P)``.
    """
    _check_segments(segments)
    _check_tensor(scores, "scores", dim=1)
    if scores.shape[0] != segments.shape[0]:
        raise ValueError(
            f"scores has {scores.shape[0]} entries for {segments.shape[0]} segments; give one "
            "score per segment"
        )
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma={sigma!r} must be a positive number (ETAD uses 0.35)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be a positive int")
    device = segments.device
    segments = segments.detach().cpu()
    work = scores.detach().to("cpu", copy=True)
    alive = torch.ones_like(work, dtype=torch.bool)
    picked = []
    picked_scores = []
    for _ in range(min(top_k, segments.shape[0])):
        i = int(torch.where(alive, work, float("-inf")).argmax())
        picked.append(i)
        picked_scores.append(work[i].clone())
        alive[i] = False
        iou = segment_iou(segments[i : i + 1], segments)[0]
        decay = torch.exp(-iou.square() / sigma)
        work = torch.where((iou > iou_threshold) & alive, work * decay, work)
    index = torch.tensor(picked, dtype=torch.long)
    kept_scores = torch.stack(picked_scores) if picked_scores else work.new_zeros(0)
    if device.type == "cpu":
        return segments[index], kept_scores, index
    return segments[index].to(device), kept_scores.to(device), index.to(device)


def fuse_class_scores(
    scores: Tensor, class_scores: Tensor, *, top_classes: int = 2
) -> tuple[Tensor, Tensor]:
    """Combine class-agnostic proposal scores with a video-level classifier.

    Every proposal is repeated for each of the ``top_classes`` best classes of the video,
    with score ``proposal score * class score`` (ETAD and BMN on ActivityNet, top 2).

    Args:
        scores: ``[K]`` proposal scores.
        class_scores: ``[C]`` video-level class scores.
        top_classes: how many classes each proposal is reported under.

    Returns:
        ``(fused [K, top_classes], classes [top_classes])``: the fused scores and the class
        indices, best class first (equal scores: lower index first).
    """
    _check_tensor(class_scores, "class_scores", dim=1)
    n_classes = class_scores.shape[0]
    if isinstance(top_classes, bool) or not isinstance(top_classes, int):
        raise ValueError(f"top_classes={top_classes!r} must be an int")
    if not 1 <= top_classes <= n_classes:
        raise ValueError(f"top_classes={top_classes} must lie in [1, {n_classes}] (C classes)")
    order = torch.sort(class_scores, descending=True, stable=True).indices[:top_classes]
    return scores[:, None] * class_scores[order][None, :], order


def to_seconds(
    segments: Tensor, duration: float, *, offset: float = 0.0, clip: bool = True
) -> Tensor:
    """Normalised segments to seconds: ``offset + segment * duration``.

    Args:
        segments: ``[P, 2]`` normalised to the video (or window).
        duration: length of the video (or window) in seconds.
        offset: start of the window in seconds (0 for whole videos).
        clip: clip to ``[0, 1]`` first, so no segment leaves the video.

    Returns:
        ``[P, 2]`` in seconds.
    """
    _check_segments(segments)
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration={duration!r} must be a positive number of seconds")
    if clip:
        segments = segments.clamp(0.0, 1.0)
    return offset + segments * duration


def detections_from_proposals(
    segments: Tensor,
    scores: Tensor,
    *,
    duration: float,
    class_scores: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    top_classes: int = 2,
    label: str = "action",
    sigma: float = 0.35,
    iou_threshold: float = 0.0,
    top_k: int = 100,
    offset: float = 0.0,
) -> list[dict[str, Any]]:
    """One video's proposals to ActivityNet-format detections (soft-NMS, classes, seconds).

    Args:
        segments: ``[P, 2]`` normalised proposals (e.g. after :func:`select_by_boundaries`).
        scores: ``[P]`` proposal confidences (e.g. :func:`proposal_scores`).
        duration: video (or window) length in seconds.
        class_scores: ``[C]`` video-level class scores; ``None`` for class-agnostic output.
        class_names: ``C`` names for ``class_scores``; required with it.
        top_classes: see :func:`fuse_class_scores`.
        label: the label of every detection in class-agnostic output.
        sigma: see :func:`soft_nms`.
        iou_threshold: see :func:`soft_nms`.
        top_k: proposals kept by soft-NMS (before repeating them per class).
        offset: see :func:`to_seconds`.

    Returns:
        ``[{"segment": [t0, t1], "score": float, "label": str}, ...]``, best score first;
        give them to :func:`sgs_tad.evaluation.format_results` under the video's id.
    """
    # Post-processing is a few hundred numbers per video: on the CPU, read back once here
    # (also where the class scores came from another device than the proposals).
    segments, scores = segments.detach().cpu(), scores.detach().cpu()
    if class_scores is not None:
        class_scores = class_scores.detach().cpu()
    kept, kept_scores, _ = soft_nms(
        segments, scores, sigma=sigma, iou_threshold=iou_threshold, top_k=top_k
    )
    seconds = to_seconds(kept, duration, offset=offset).tolist()
    if class_scores is None:
        if class_names is not None:
            raise ValueError("class_names was given without class_scores; pass both or neither")
        return [
            {"segment": seg, "score": float(s), "label": label}
            for seg, s in zip(seconds, kept_scores.tolist())
        ]
    if class_names is None or len(class_names) != class_scores.shape[-1]:
        raise ValueError(
            f"class_scores has {class_scores.shape[-1]} entries; pass class_names with as "
            f"many names (got {None if class_names is None else len(class_names)})"
        )
    fused, classes = fuse_class_scores(kept_scores, class_scores, top_classes=top_classes)
    flat = fused.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices.tolist()
    names = [class_names[c] for c in classes.tolist()]
    values = flat.tolist()
    k = len(names)
    return [
        {"segment": list(seconds[i // k]), "score": float(values[i]), "label": names[i % k]}
        for i in order
    ]


def merge_window_detections(
    windows: Iterable[Sequence[Mapping[str, Any]]],
    *,
    sigma: float = 0.35,
    iou_threshold: float = 0.0,
    top_k: int = 100,
) -> list[dict[str, Any]]:
    """Join the detections of one video's sliding windows into the video's detections.

    Windows overlap (by half a window in ``WindowedDataset``'s default), so an action in the
    overlap is usually detected twice, once per window. The detections of all windows are
    pooled and, for each label separately, Gaussian soft-NMS decays the scores of those that
    overlap a better one (a duplicate of IoU 1 keeps ``exp(-1 / sigma)`` of its score, 6 % at
    ETAD's 0.35); the ``top_k`` best of all labels are kept.

    Args:
        windows: per window, its detections ``[{"segment": [t0, t1], "score", "label"}, ...]``
            in seconds **of the video**: made with the window's ``offset`` (e.g.
            :func:`detections_from_proposals` with ``offset=sample.offset``).
        sigma: see :func:`soft_nms`.
        iou_threshold: see :func:`soft_nms`.
        top_k: detections kept for the video, over all labels.

    Returns:
        The video's detections, best score first.

    Example:
        >>> a = [{"segment": [4.0, 6.0], "score": 0.9, "label": "hop"}]
        >>> b = [{"segment": [4.0, 6.0], "score": 0.8, "label": "hop"},
        ...      {"segment": [9.0, 11.0], "score": 0.7, "label": "hop"}]
        >>> [(d["segment"], round(d["score"], 3)) for d in merge_window_detections([a, b])]
        [([4.0, 6.0], 0.9), ([9.0, 11.0], 0.7), ([4.0, 6.0], 0.046)]
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be a positive int")
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for w, dets in enumerate(windows):
        for i, det in enumerate(dets):
            if not {"segment", "score", "label"} <= set(det):
                raise ValueError(
                    f"window {w}, detection {i} is {det!r}; each needs 'segment', 'score' and "
                    "'label' (the dicts of detections_from_proposals)"
                )
            by_label.setdefault(str(det["label"]), []).append(det)
    merged: list[tuple[float, int, dict[str, Any]]] = []
    for label, dets in by_label.items():
        segments = torch.tensor([[float(x) for x in d["segment"]] for d in dets],
                                dtype=torch.float64).reshape(-1, 2)  # fmt: skip
        scores = torch.tensor([float(d["score"]) for d in dets], dtype=torch.float64)
        kept, kept_scores, _ = soft_nms(
            segments, scores, sigma=sigma, iou_threshold=iou_threshold, top_k=top_k
        )
        for seg, score in zip(kept.tolist(), kept_scores.tolist()):
            merged.append((score, len(merged), {"segment": seg, "score": score, "label": label}))
    merged.sort(key=lambda item: (-item[0], item[1]))
    return [det for _, _, det in merged[:top_k]]


def _check_tensor(value: Any, name: str, *, dim: int | None = None, min_dim: int = 0) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if (dim is not None and value.dim() != dim) or value.dim() < min_dim:
        want = f"{dim}" if dim is not None else f"at least {min_dim}"
        raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {want} dimension(s)")


def _check_segments(segments: Any) -> None:
    _check_tensor(segments, "segments", dim=2)
    if segments.shape[1] != 2:
        raise ValueError(f"segments has shape {tuple(segments.shape)}, expected [P, 2]")
