"""Temporal action detection mAP, computed as the official ActivityNet evaluation does.

The protocol (``Evaluation/eval_detection.py`` of github.com/activitynet/ActivityNet):

1. Ground truth is the instances of one subset; the classes are the labels that have at
   least one instance there.
2. Per class, predictions are ranked by descending score, ``np.argsort(scores)[::-1]`` with
   NumPy's default sort, so equal scores come out in the same order as in the official code.
3. Per tIoU threshold, each prediction in that order is a true positive if some ground truth
   of its class in its video has ``tIoU >= threshold`` and is not yet taken; it takes the one
   of highest tIoU (equal tIoUs: ``np.argsort(tious)[::-1]`` order again). Anything else is a
   false positive.
4. Average precision is VOC 2011 interpolated AP over the precision/recall curve; mAP is its
   mean over classes, and average mAP the mean of mAP over thresholds.

The greedy matching is sequential in the predictions of one (class, video) pair but
independent across pairs, so we run it for all pairs and all thresholds at once: step ``k``
handles the ``k``-th ranked prediction of every pair.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sgs_tad.evaluation.formats import GroundTruth, JsonSource, Predictions, load_json
from sgs_tad.evaluation.formats import parse_ground_truth as _parse_ground_truth
from sgs_tad.evaluation.formats import parse_predictions as _parse_predictions

__all__ = [
    "ACTIVITYNET_TIOU_THRESHOLDS",
    "THUMOS_TIOU_THRESHOLDS",
    "DetectionResult",
    "default_tiou_thresholds",
    "evaluate_detection",
    "interpolated_average_precision",
]

# np.linspace, not np.arange: these are the exact float values the official code compares
# tIoUs with (0.5 + 6 * 0.05 by arange is 0.8000000000000002, by linspace 0.8).
ACTIVITYNET_TIOU_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.linspace(0.5, 0.95, 10)
)
"""0.5:0.05:0.95, the ActivityNet and HACS protocol."""

THUMOS_TIOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
"""The THUMOS-14 protocol."""


def default_tiou_thresholds(dataset: Literal["activitynet", "thumos"]) -> tuple[float, ...]:
    """The tIoU thresholds of a dataset's protocol."""
    table = {"activitynet": ACTIVITYNET_TIOU_THRESHOLDS, "thumos": THUMOS_TIOU_THRESHOLDS}
    if dataset not in table:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(table)}")
    return table[dataset]


@dataclass(frozen=True)
class DetectionResult:
    """Outcome of :func:`evaluate_detection`. Every number is in ``[0, 1]``.

    Attributes:
        tiou_thresholds: the thresholds, in the order given.
        mAP: threshold -> mean over classes of the average precision.
        average_mAP: mean of ``mAP`` over the thresholds (ActivityNet's headline number).
        ap_per_class: class name -> AP at each threshold (same order as ``tiou_thresholds``).
        num_ground_truth: ground-truth instances evaluated.
        num_predictions: predictions evaluated (after dropping unknown labels).
    """

    tiou_thresholds: tuple[float, ...]
    mAP: dict[float, float]
    average_mAP: float
    ap_per_class: dict[str, tuple[float, ...]] = field(repr=False)
    num_ground_truth: int
    num_predictions: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; thresholds become strings such as ``"0.5"``."""
        return {
            "average_mAP": self.average_mAP,
            "mAP": {_threshold_key(t): v for t, v in self.mAP.items()},
            "tiou_thresholds": list(self.tiou_thresholds),
            "ap_per_class": {k: list(v) for k, v in self.ap_per_class.items()},
            "num_ground_truth": self.num_ground_truth,
            "num_predictions": self.num_predictions,
        }


def evaluate_detection(
    ground_truth: JsonSource,
    predictions: JsonSource,
    *,
    subset: str = "validation",
    tiou_thresholds: Sequence[float] = ACTIVITYNET_TIOU_THRESHOLDS,
    blocked_videos: Collection[str] = (),
    class_agnostic: bool = False,
) -> DetectionResult:
    """ActivityNet detection mAP of ``predictions`` against ``ground_truth``.

    Args:
        ground_truth: ActivityNet ground-truth dict (``{"database": ...}``) or its JSON path.
        predictions: results dict (``{"results": ...}``) or its JSON path.
        subset: the ``subset`` value of the videos to evaluate (compared exactly, as the
            official code does: THUMOS files often say ``"Test"``).
        tiou_thresholds: thresholds in ``[0, 1]``; :data:`THUMOS_TIOU_THRESHOLDS` for THUMOS.
        blocked_videos: video ids removed from both files (the official code downloaded such a
            list from a server that no longer answers; pass it here to reproduce papers that
            used it).
        class_agnostic: treat every label as the same class (proposal-style detection mAP).

    Returns:
        The mAP per threshold, the average mAP and the AP of each class.

    Raises:
        ValueError: malformed input (the message names the entry), a subset with no
            ground-truth instance, or bad thresholds.

    Warns:
        EvaluationWarning: predictions with labels that have no ground truth in the subset
            (ignored), predictions on videos outside the subset (false positives, as in the
            official code), ground-truth videos absent from the predictions (missed).

    Example:
        >>> gt = {"database": {"v": {"subset": "validation",
        ...       "annotations": [{"segment": [0.0, 10.0], "label": "jump"}]}}}
        >>> pred = {"results": {"v": [{"segment": [0.0, 7.9], "label": "jump", "score": 1.0}]}}
        >>> round(evaluate_detection(gt, pred).average_mAP, 6)  # tIoU 0.79: hit up to 0.75
        0.6
    """
    thresholds = _check_thresholds(tiou_thresholds)
    gt = _parse_ground_truth(
        load_json(ground_truth, what="ground truth"),
        subset=subset,
        blocked_videos=blocked_videos,
        class_agnostic=class_agnostic,
    )
    pred = _parse_predictions(
        load_json(predictions, what="predictions"),
        gt,
        subset=subset,
        blocked_videos=blocked_videos,
        class_agnostic=class_agnostic,
    )
    ap = _average_precision(gt, pred, thresholds)  # [n_thresholds, n_classes]
    # Same reductions, in the same order, as the official code: bit-identical results.
    mean_ap = ap.mean(axis=1)
    return DetectionResult(
        tiou_thresholds=tuple(float(t) for t in thresholds),
        mAP={float(t): float(m) for t, m in zip(thresholds, mean_ap)},
        average_mAP=float(mean_ap.mean()),
        ap_per_class={name: tuple(float(a) for a in ap[:, c]) for c, name in enumerate(gt.labels)},
        num_ground_truth=len(gt.label),
        num_predictions=len(pred.label),
    )


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC 2011 interpolated average precision of one precision/recall curve.

    Precision is made monotone (each point takes the largest precision at equal or higher
    recall) and integrated over the recall steps, with the curve closed at recall 0 and 1.

    Args:
        precision: ``[N]`` precision after each ranked prediction.
        recall: ``[N]`` recall after each ranked prediction (non-decreasing).

    Example:
        >>> interpolated_average_precision(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0]))
        0.8333333333333333
    """
    mprec = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mprec[steps]))


def _check_thresholds(tiou_thresholds: Sequence[float]) -> np.ndarray:
    try:
        values = [float(t) for t in tiou_thresholds]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"tiou_thresholds={tiou_thresholds!r} must be a sequence of numbers in [0, 1]"
        ) from err
    if not values or not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in values):
        raise ValueError(
            f"tiou_thresholds={tiou_thresholds!r} must be a non-empty sequence of numbers in "
            "[0, 1], e.g. ACTIVITYNET_TIOU_THRESHOLDS"
        )
    return np.asarray(values, dtype=np.float64)


def _threshold_key(t: float) -> str:
    return format(round(t, 10), "g")


def _average_precision(gt: GroundTruth, pred: Predictions, thresholds: np.ndarray) -> np.ndarray:
    """AP ``[n_thresholds, n_classes]``."""
    n_classes = len(gt.labels)
    # Rank within the class: position in np.argsort(scores)[::-1] over the class's predictions
    # in file order, exactly the array the official code sorts.
    rank = np.empty(len(pred.label), dtype=np.int64)
    ranked: list[np.ndarray] = []
    for c in range(n_classes):
        members = np.flatnonzero(pred.label == c)
        order = members[np.argsort(pred.scores[members])[::-1]]
        rank[order] = np.arange(len(order))
        ranked.append(order)
    tp = _match(gt, pred, rank, thresholds)  # [P, n_thresholds] bool

    n_gt = np.bincount(gt.label, minlength=n_classes)
    ap = np.zeros((len(thresholds), n_classes))
    for c in range(n_classes):
        if len(ranked[c]) == 0:
            continue  # no prediction for this class: AP 0, as in the official code
        hits = tp[ranked[c]].T.astype(np.float64)  # [n_thresholds, P_c]
        tp_cum = np.cumsum(hits, axis=1)
        fp_cum = np.cumsum(1.0 - hits, axis=1)
        recall = tp_cum / float(n_gt[c])
        precision = tp_cum / (tp_cum + fp_cum)
        for t in range(len(thresholds)):
            ap[t, c] = interpolated_average_precision(precision[t], recall[t])
    return ap


def _match(
    gt: GroundTruth, pred: Predictions, rank: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Greedy matching of every prediction at every threshold: true-positive flags [P, T]."""
    n_thr = len(thresholds)
    tp = np.zeros((len(pred.label), n_thr), dtype=bool)
    n_videos = max(len(gt.videos), 1)

    # Groups are (class, video) pairs holding ground truth; instances keep file order.
    gt_key = gt.label * n_videos + gt.video
    gt_order = np.argsort(gt_key, kind="stable")
    group_keys, gt_first, gt_count = np.unique(
        gt_key[gt_order], return_index=True, return_counts=True
    )
    # Predictions of a pair without ground truth (or of a video outside the subset) stay
    # false positives; the others find their group.
    pred_key = pred.label * n_videos + pred.video
    slot = np.minimum(np.searchsorted(group_keys, pred_key), len(group_keys) - 1)
    matched = np.flatnonzero((pred.video >= 0) & (group_keys[slot] == pred_key))
    if len(matched) == 0:
        return tp
    group = slot[matched]

    # Order groups by decreasing number of predictions so that the groups still active at
    # step k are a prefix; inside a group, predictions go by rank.
    n_pred_in_group = np.bincount(group, minlength=len(group_keys))
    by_size = np.argsort(-n_pred_in_group, kind="stable")
    new_id = np.empty_like(by_size)
    new_id[by_size] = np.arange(len(by_size))
    group = new_id[group]
    order = np.lexsort((rank[matched], group))
    matched, group = matched[order], group[order]
    group_start = np.searchsorted(group, np.arange(len(by_size)))
    step = np.arange(len(matched)) - group_start[group]
    sizes = n_pred_in_group[by_size]
    n_groups = int(np.count_nonzero(sizes))
    width = int(gt_count.max())

    queue = np.full((n_groups, int(sizes[0])), -1, dtype=np.int64)
    queue[group, step] = matched
    g_count = gt_count[by_size][:n_groups]
    g_first = gt_first[by_size][:n_groups]
    valid = np.arange(width)[None, :] < g_count[:, None]  # [G, W]
    members = gt_order[np.where(valid, g_first[:, None] + np.arange(width), 0)]
    gt_start = np.where(valid, gt.segments[members, 0], 0.0)
    gt_end = np.where(valid, gt.segments[members, 1], 0.0)
    gt_length = gt_end - gt_start
    taken = np.zeros((n_groups, n_thr, width), dtype=bool)
    thr = thresholds[None, :, None]

    for k in range(int(sizes[0])):
        active = int(np.count_nonzero(sizes > k))
        p = queue[:active, k]
        p_start = pred.segments[p, 0][:, None]
        p_end = pred.segments[p, 1][:, None]
        # The official segment_iou, operation for operation (same rounding). Two zero-length
        # segments give 0/0 = NaN, which the official code treats as a match because
        # `NaN < threshold` is False; we keep that.
        inter = (np.minimum(p_end, gt_end[:active]) - np.maximum(p_start, gt_start[:active])).clip(
            0
        )
        union = gt_length[:active] + (p_end - p_start) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            tiou = inter / union  # [A, W]
        eligible = ~(tiou[:, None, :] < thr) & ~taken[:active] & valid[:active, None, :]
        # The official loop walks ground truth by descending tIoU (NaN first) and takes the
        # first eligible one: the eligible maximum, ties resolved below.
        key = np.where(np.isnan(tiou), np.inf, tiou)[:, None, :]
        key = np.where(eligible, key, -np.inf)
        best = key.max(axis=2, keepdims=True)
        at_best = eligible & (key == best)
        hit = at_best.any(axis=2)  # [A, T]
        choice = at_best.argmax(axis=2)
        for a, t in zip(*np.nonzero(at_best.sum(axis=2) > 1)):
            walk = np.argsort(tiou[a, : g_count[a]])[::-1]
            choice[a, t] = walk[np.argmax(eligible[a, t, walk])]
        rows, cols = np.nonzero(hit)
        taken[rows, cols, choice[rows, cols]] = True
        tp[p] = hit
    return tp
