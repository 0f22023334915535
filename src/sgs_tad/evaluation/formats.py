"""Reading and writing the ActivityNet detection JSON formats.

Ground truth (``activity_net.v1-3.min.json`` and every dataset converted to it)::

    {"database": {VIDEO_ID: {"subset": "validation",
                             "annotations": [{"segment": [t0, t1], "label": "Surfing"}, ...],
                             ...}, ...},
     ...}

Predictions (the challenge's submission format)::

    {"results": {VIDEO_ID: [{"segment": [t0, t1], "label": "Surfing", "score": 0.9}, ...], ...},
     "version": "...", "external_data": {...}}

Times are in seconds (any unit works as long as both files use the same one).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

__all__ = ["EvaluationWarning", "JsonSource", "format_results", "load_json"]

JsonSource = Union[Mapping[str, Any], str, "os.PathLike[str]"]
"""A parsed JSON dict, or the path of a JSON file."""

_AGNOSTIC_LABEL = "action"
_MAX_LISTED = 5
_PLAIN_NUMBERS = (float, int)
_PLAIN_COORDINATES = (float, int, np.float64, np.float32, np.int64, np.int32)


class EvaluationWarning(UserWarning):
    """A data problem that the evaluation handles in a documented way.

    Make it an error with ``warnings.simplefilter("error", EvaluationWarning)``.
    """


def load_json(source: JsonSource, *, what: str = "JSON") -> Mapping[str, Any]:
    """Return ``source`` itself if it is a dict, else the JSON object stored at that path.

    Raises:
        ValueError: the file is not valid JSON or does not hold a JSON object.
        TypeError: ``source`` is neither a mapping nor a path.
    """
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"{what} must be a dict or the path of a JSON file, got {type(source).__name__}"
        )
    path = os.fspath(source)
    with open(path, encoding="utf-8") as fobj:
        try:
            data = json.load(fobj)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{what} file {path!r} is not valid JSON ({err}); check that the file is "
                "complete and was written with json.dump"
            ) from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{what} file {path!r} holds a JSON {type(data).__name__}, expected an object "
            "(a dict with a 'database' or 'results' key)"
        )
    return data


def format_results(
    detections: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    version: str = "VERSION 1.3",
    external_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Wrap per-video detections in the ActivityNet results format, ready for ``json.dump``.

    Args:
        detections: ``{video_id: [{"segment": [t0, t1], "label": str, "score": float}, ...]}``,
            e.g. the lists returned by
            :func:`sgs_tad.detection.postprocess.detections_from_proposals`.
        version: the ``version`` field of the file.
        external_data: the ``external_data`` field (the challenge asks which extra data was
            used); empty by default.

    Returns:
        ``{"version": ..., "results": {...}, "external_data": {...}}`` with plain Python
        floats, so that it serialises with the standard ``json`` module.

    Example:
        >>> format_results({"v1": [{"segment": [1, 2.5], "label": "Run", "score": 0.5}]})
        {'version': 'VERSION 1.3', 'results': {'v1': [{'segment': [1.0, 2.5], 'label': 'Run', \
'score': 0.5}]}, 'external_data': {}}
    """
    results: dict[str, list[dict[str, Any]]] = {}
    for video_id, dets in detections.items():
        entries = []
        for i, det in enumerate(dets):
            where = f"detections[{video_id!r}][{i}]"
            _check_keys(det, ("segment", "label", "score"), where)
            start, end = _segment(det["segment"], where)
            score = _score(det["score"], where)
            entries.append({"segment": [start, end], "label": str(det["label"]), "score": score})
        results[str(video_id)] = entries
    return {
        "version": version,
        "results": results,
        "external_data": dict(external_data) if external_data is not None else {},
    }


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth instances of one subset as flat arrays (internal).

    Attributes:
        labels: class names, in order of first appearance in the file (the official order).
        videos: video id -> index for every video of the subset, annotated or not.
        video: ``[G]`` video index of each instance.
        label: ``[G]`` class index of each instance.
        segments: ``[G, 2]`` float64 start and end.
    """

    labels: list[str]
    videos: dict[str, int]
    video: np.ndarray
    label: np.ndarray
    segments: np.ndarray


@dataclass(frozen=True)
class Predictions:
    """Predictions as flat arrays (internal), in file order.

    Attributes:
        video: ``[P]`` index into ``GroundTruth.videos``, ``-1`` for a video outside the subset.
        label: ``[P]`` class index.
        segments: ``[P, 2]`` float64 start and end.
        scores: ``[P]`` int64 if every score is an integer, else float64 (what the official
            code's pandas column would hold; it matters for the order of equal scores).
    """

    video: np.ndarray
    label: np.ndarray
    segments: np.ndarray
    scores: np.ndarray


def parse_ground_truth(
    data: Mapping[str, Any],
    *,
    subset: str,
    blocked_videos: Collection[str],
    class_agnostic: bool,
) -> GroundTruth:
    """Validate an ActivityNet ground-truth dict and keep the instances of ``subset``."""
    database = data.get("database")
    if not isinstance(database, Mapping):
        raise ValueError(
            "ground truth must hold a 'database' object mapping video ids to "
            f"{{'subset', 'annotations'}}; got top-level keys {sorted(data)[:10]}"
        )
    labels: dict[str, int] = {}
    videos: dict[str, int] = {}
    subsets: dict[str, int] = {}
    video_idx: list[int] = []
    label_idx: list[int] = []
    segments: list[tuple[float, float]] = []
    for video_id, entry in database.items():
        if not isinstance(entry, Mapping) or "subset" not in entry:
            raise ValueError(
                f"ground truth video {video_id!r} has no 'subset' field; every database entry "
                "needs 'subset' and 'annotations'"
            )
        video_subset = entry["subset"]
        subsets[str(video_subset)] = subsets.get(str(video_subset), 0) + 1
        if video_subset != subset or video_id in blocked_videos:
            continue
        annotations = entry.get("annotations")
        if not isinstance(annotations, Sequence) or isinstance(annotations, str):
            raise ValueError(
                f"ground truth video {video_id!r} has 'annotations' = {annotations!r}, "
                "expected a list of {'segment': [t0, t1], 'label': str}"
            )
        vidx = videos.setdefault(str(video_id), len(videos))
        for i, ann in enumerate(annotations):
            where = f"ground truth {video_id!r} annotation {i}"
            _check_keys(ann, ("segment", "label"), where)
            name = _AGNOSTIC_LABEL if class_agnostic else str(ann["label"])
            video_idx.append(vidx)
            label_idx.append(labels.setdefault(name, len(labels)))
            segments.append(_segment(ann["segment"], where))
    if not segments:
        raise ValueError(
            f"the ground truth has no annotated instance in subset {subset!r} "
            f"(videos per subset: {subsets}); pass one of these subsets"
        )
    return GroundTruth(
        labels=list(labels),
        videos=videos,
        video=np.asarray(video_idx, dtype=np.int64),
        label=np.asarray(label_idx, dtype=np.int64),
        segments=np.asarray(segments, dtype=np.float64).reshape(-1, 2),
    )


def parse_predictions(
    data: Mapping[str, Any],
    ground_truth: GroundTruth,
    *,
    subset: str,
    blocked_videos: Collection[str],
    class_agnostic: bool,
) -> Predictions:
    """Validate an ActivityNet results dict and map it onto ``ground_truth``'s indices."""
    results = data.get("results")
    if not isinstance(results, Mapping):
        raise ValueError(
            "predictions must hold a 'results' object mapping video ids to lists of "
            f"{{'segment', 'label', 'score'}}; got top-level keys {sorted(data)[:10]}"
        )
    classes = {name: i for i, name in enumerate(ground_truth.labels)}
    video_idx: list[int] = []
    label_idx: list[int] = []
    starts: list[float | int] = []
    ends: list[float | int] = []
    scores: list[float | int] = []
    origin: list[tuple[str, int]] = []
    unknown: dict[str, int] = {}
    outside: set[str] = set()
    for video_id, dets in results.items():
        if video_id in blocked_videos:
            continue
        if not isinstance(dets, Sequence) or isinstance(dets, str):
            raise ValueError(
                f"predictions for video {video_id!r} are {type(dets).__name__}, expected a list "
                "of {'segment': [t0, t1], 'label': str, 'score': float}"
            )
        vidx = ground_truth.videos.get(str(video_id), -1)
        for i, det in enumerate(dets):
            # Fast path for what json.load produces (a million predictions is common);
            # finiteness and start <= end are checked on the arrays below.
            seg = det.get("segment") if type(det) is dict else None
            score = det.get("score") if type(det) is dict else None
            name = det.get("label") if type(det) is dict else None
            if not (
                type(seg) is list
                and len(seg) == 2
                and type(seg[0]) in _PLAIN_COORDINATES
                and type(seg[1]) in _PLAIN_COORDINATES
                and type(score) in _PLAIN_NUMBERS
                and type(name) is str
            ):
                where = f"prediction {video_id!r}[{i}]"
                _check_keys(det, ("segment", "label", "score"), where)
                seg = _segment(det["segment"], where)
                score = _score(det["score"], where)
                name = str(det["label"])
            if class_agnostic:
                name = _AGNOSTIC_LABEL
            label = classes.get(name, -1)
            if label < 0:
                unknown[name] = unknown.get(name, 0) + 1
            elif vidx < 0:
                outside.add(str(video_id))
            video_idx.append(vidx)
            label_idx.append(label)
            starts.append(seg[0])
            ends.append(seg[1])
            scores.append(score)  # type: ignore[arg-type]
            origin.append((video_id, i))
    segments = np.stack(
        [np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)], axis=1
    )
    # No dtype: all-integer scores stay int64 like the official code's pandas column.
    score_array = np.asarray(scores) if scores else np.zeros(0, dtype=np.float64)
    if score_array.dtype.kind not in "if":
        raise ValueError("prediction scores must be numbers that fit in 64 bits")
    bad = ~(np.isfinite(segments).all(axis=1) & (segments[:, 0] <= segments[:, 1]))
    bad |= ~np.isfinite(score_array)
    if bad.any():
        video_id, i = origin[int(np.argmax(bad))]
        where = f"prediction {video_id!r}[{i}]"
        _segment(results[video_id][i]["segment"], where)
        _score(results[video_id][i]["score"], where)
    known = np.asarray(label_idx, dtype=np.int64) >= 0
    n_outside = int(np.count_nonzero(known & (np.asarray(video_idx, dtype=np.int64) < 0)))
    if unknown:
        names = sorted(unknown, key=lambda k: -unknown[k])[:_MAX_LISTED]
        warnings.warn(
            f"{sum(unknown.values())} predictions carry {len(unknown)} labels with no ground "
            f"truth instance in subset {subset!r} (e.g. {names}); they are ignored (the official "
            "code stops with a KeyError here). Check the label names if this is unexpected.",
            EvaluationWarning,
            stacklevel=3,
        )
    if outside:
        warnings.warn(
            f"{n_outside} predictions are on {len(outside)} videos that are not in subset "
            f"{subset!r} of the ground truth (e.g. {sorted(outside)[:_MAX_LISTED]}); as in the "
            "official evaluation they count as false positives. Drop those videos from the "
            "predictions if they belong to another subset.",
            EvaluationWarning,
            stacklevel=3,
        )
    missing = [v for v in ground_truth.videos if v not in results]
    if missing:
        warnings.warn(
            f"{len(missing)} of the {len(ground_truth.videos)} ground-truth videos of subset "
            f"{subset!r} have no entry in the predictions (e.g. {missing[:_MAX_LISTED]}); their "
            "instances count as missed. Give such videos an empty list to silence this.",
            EvaluationWarning,
            stacklevel=3,
        )
    return Predictions(
        video=np.asarray(video_idx, dtype=np.int64)[known],
        label=np.asarray(label_idx, dtype=np.int64)[known],
        segments=segments[known],
        scores=score_array[known],
    )


def _check_keys(entry: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} is {entry!r}, expected a dict with keys {list(keys)}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {missing}; it has {sorted(entry)}, needs {list(keys)}")


def _segment(value: Any, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(_is_number(v) for v in value)
    ):
        raise ValueError(f"{where} has segment {value!r}, expected [start, end] (two numbers)")
    start, end = float(value[0]), float(value[1])
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        raise ValueError(
            f"{where} has segment {value!r}; expected finite numbers with start <= end"
        )
    return start, end


def _score(value: Any, where: str) -> float | int:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"{where} has score {value!r}, expected a finite number")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
