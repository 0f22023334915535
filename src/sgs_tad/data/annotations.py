"""ActivityNet-format annotations: the ``database`` JSON read into immutable records.

The official ActivityNet annotation file looks like::

    {"version": "...", "taxonomy": [...],
     "database": {"<video id>": {"subset": "training", "duration": 123.4,
                                 "annotations": [{"segment": [s, e], "label": "..."}]}}}

Times are in seconds. :func:`load_annotations` turns it into :class:`VideoAnnotation` records
made of tuples and frozen dataclasses, so no dataset code can mutate the cached annotations
(the habit of mutating them in ``__getitem__`` is a known source of bugs in TAD code).

Example:
    >>> import json, tempfile, os
    >>> db = {"database": {"a": {"subset": "training", "duration": 10.0,
    ...       "annotations": [{"segment": [1.0, 4.0], "label": "jump"}]}}}
    >>> path = os.path.join(tempfile.mkdtemp(), "anno.json")
    >>> with open(path, "w") as f:
    ...     json.dump(db, f)
    >>> ann = load_annotations(path, subset="training")
    >>> ann.classes, ann.videos[0].segments, ann.videos[0].labels
    (('jump',), ((1.0, 4.0),), ('jump',))
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["AnnotationSet", "VideoAnnotation", "load_annotations", "parse_annotations"]

logger = logging.getLogger(__name__)

#: Subset names of the official file, with the short aliases accepted by ``subset=``.
SUBSET_ALIASES: dict[str, str] = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "validation": "validation",
    "test": "testing",
    "testing": "testing",
}


@dataclass(frozen=True)
class VideoAnnotation:
    """The ground truth of one video, immutable.

    Attributes:
        video_id: The key in ``database`` (without any ``v_`` prefix it may carry on disk).
        subset: ``"training"``, ``"validation"``, ``"testing"`` or whatever the file says.
        duration: Duration in seconds.
        segments: ``((start, end), ...)`` in seconds, one per instance, as in the file.
        labels: Class name of each instance, aligned with ``segments``.
        label_ids: Index of each label in the class list of the :class:`AnnotationSet`.
        fps: Frame rate when the file states one (``"fps"`` key), else ``None``.
    """

    video_id: str
    subset: str
    duration: float
    segments: tuple[tuple[float, float], ...]
    labels: tuple[str, ...]
    label_ids: tuple[int, ...]
    fps: float | None = None


@dataclass(frozen=True)
class AnnotationSet:
    """The videos of one annotation file (optionally one subset) and the class list.

    Attributes:
        videos: The kept videos, sorted by id.
        classes: Class names; a label's id is its position here.
        skipped: Number of videos dropped by ``on_error="skip"``.
    """

    videos: tuple[VideoAnnotation, ...]
    classes: tuple[str, ...]
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.videos)

    def by_id(self, video_id: str) -> VideoAnnotation:
        """Return the record of ``video_id``; raises ``KeyError`` naming it if absent."""
        for v in self.videos:
            if v.video_id == video_id:
                return v
        raise KeyError(f"video {video_id!r} is not in this annotation set ({len(self)} videos)")


def load_annotations(
    path: str | Path,
    *,
    subset: str | None = None,
    classes: Sequence[str] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> AnnotationSet:
    """Read an ActivityNet-format annotation JSON file.

    Args:
        path: The JSON file.
        subset: Keep only this subset (``"training"``/``"train"``, ``"validation"``/``"val"``,
            ``"testing"``/``"test"``, or any name used in the file); ``None`` keeps all.
        classes: The class list. ``None`` uses the sorted set of labels over the *whole*
            file (all subsets), so training and validation sets built from one file agree.
        on_error: What to do with a video whose label is not in ``classes`` or whose segment is
            malformed: ``"raise"`` a ``ValueError``, or ``"skip"`` the video and log one warning
            with the count.

    Returns:
        The :class:`AnnotationSet`.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        ValueError: when the file is not valid JSON (naming the line and column), or not in
            the ActivityNet format.

    Accepted with a warning (``logging.warning``, with counts): segments that start below 0
    or end past the video's duration (the data set clips them to the video), and, when
    validation videos are read, labels that occur in the validation subset but never in
    training (no model can learn them); labels (and ``classes``) with leading or trailing
    whitespace, which are stripped (``"jump "`` is the class ``"jump"``: a stray space in a
    hand-edited file would otherwise make a new class that no video of the other spelling
    can teach).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file {str(path)!r} does not exist; pass the path of an ActivityNet-"
            "format JSON file (make a synthetic one with sgs_tad.data.generate_synthetic_dataset)."
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"annotation file {str(path)!r} is not valid JSON: {err.msg} at line {err.lineno} "
            f"column {err.colno} (character {err.pos}); fix the file there (a truncated "
            "download or a hand edit?) or regenerate it."
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"annotation file {str(path)!r} is not UTF-8 text ({err.reason} at byte "
            f"{err.start}); pass the ActivityNet-format JSON file."
        ) from None
    return parse_annotations(data, subset=subset, classes=classes, on_error=on_error)


def parse_annotations(
    data: Mapping[str, Any],
    *,
    subset: str | None = None,
    classes: Sequence[str] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> AnnotationSet:
    """Like :func:`load_annotations`, from the already parsed JSON object ``data``."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}.")
    if not isinstance(data, Mapping) or not isinstance(data.get("database"), Mapping):
        raise ValueError(
            "an ActivityNet annotation file must be a JSON object with a 'database' object "
            f"mapping video ids to records; got top-level keys {sorted(data)[:5]!r}"
            if isinstance(data, Mapping)
            else f"expected a JSON object; got {type(data).__name__}"
        )
    database: Mapping[str, Any] = data["database"]
    padded: set[str] = set()
    if classes is None:
        names = {
            _clean_label(a.get("label"), padded)
            for rec in database.values()
            for a in (rec.get("annotations") or [])
            if isinstance(a, Mapping) and "label" in a
        }
        class_list = tuple(sorted(names))
    else:
        class_list = tuple(_clean_label(c, padded) for c in classes)
        if len(set(class_list)) != len(class_list):
            raise ValueError(f"classes has duplicate names: {list(class_list)!r}")
    class_index = {c: i for i, c in enumerate(class_list)}
    wanted = None if subset is None else SUBSET_ALIASES.get(subset, subset)

    videos: list[VideoAnnotation] = []
    problems: list[str] = []
    for video_id in sorted(database):
        rec = database[video_id]
        if wanted is not None and rec.get("subset") != wanted:
            continue
        try:
            videos.append(_parse_video(str(video_id), rec, class_index, padded))
        except ValueError as err:
            if on_error == "raise":
                raise
            problems.append(str(err))
    if problems:
        logger.warning(
            "skipped %d video(s) with bad annotations (first: %s)", len(problems), problems[0]
        )
    if padded:
        logger.warning(
            "%d label(s) with leading or trailing spaces (%s): stripped, so that e.g. %r and "
            "%r are one class, not two. Fix the labels in the annotation file (or classes=) "
            "to silence this warning.",
            len(padded),
            ", ".join(repr(lab) for lab in sorted(padded)[:5]),
            sorted(padded)[0],
            sorted(padded)[0].strip(),
        )
    _warn_out_of_range(videos)
    if wanted is None or wanted == "validation":
        _warn_validation_only_labels(database)
    return AnnotationSet(videos=tuple(videos), classes=class_list, skipped=len(problems))


def _clean_label(raw: object, padded: set[str]) -> str:
    """``raw`` as a label without surrounding whitespace; a padded one is added to ``padded``."""
    label = str(raw)
    clean = label.strip()
    if clean != label:
        padded.add(label)
    return clean


def _parse_video(
    video_id: str, rec: Mapping[str, Any], class_index: Mapping[str, int], padded: set[str]
) -> VideoAnnotation:
    try:
        duration = float(rec["duration"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"video {video_id!r} has no numeric 'duration' (got {rec.get('duration')!r}); "
            "every database record needs its duration in seconds."
        ) from None
    if not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"video {video_id!r} has duration {duration}; expected > 0 seconds.")
    segments: list[tuple[float, float]] = []
    labels: list[str] = []
    for a in rec.get("annotations") or []:
        seg = a.get("segment") if isinstance(a, Mapping) else None
        if not isinstance(seg, Sequence) or len(seg) != 2:
            raise ValueError(
                f"video {video_id!r} has an annotation without a [start, end] 'segment': {a!r}"
            )
        start, end = float(seg[0]), float(seg[1])
        if not (end > start):
            raise ValueError(
                f"video {video_id!r} has segment [{start}, {end}] whose end is not after its start"
            )
        label = _clean_label(a.get("label"), padded)
        if label not in class_index:
            raise ValueError(
                f"video {video_id!r} has label {label!r}, which is not in the class list "
                f"({len(class_index)} classes, e.g. {list(class_index)[:5]!r}); pass classes= "
                "with every label, or on_error='skip' to drop such videos."
            )
        segments.append((start, end))
        labels.append(label)
    fps = rec.get("fps")
    return VideoAnnotation(
        video_id=video_id,
        subset=str(rec.get("subset", "")),
        duration=duration,
        segments=tuple(segments),
        labels=tuple(labels),
        label_ids=tuple(class_index[lab] for lab in labels),
        fps=None if fps is None else float(fps),
    )


def _warn_out_of_range(videos: Sequence[VideoAnnotation]) -> None:
    """One warning counting segments that start below 0 or end past their video's end."""
    below = past = 0
    affected: list[str] = []
    first = ""
    for v in videos:
        n_below = sum(1 for start, _ in v.segments if start < 0)
        n_past = sum(1 for _, end in v.segments if end > v.duration)
        if n_below or n_past:
            affected.append(v.video_id)
            if not first:
                seg = next(s for s in v.segments if s[0] < 0 or s[1] > v.duration)
                first = f"video {v.video_id!r}: [{seg[0]}, {seg[1]}] in {v.duration} s"
        below, past = below + n_below, past + n_past
    if affected:
        logger.warning(
            "%d segment(s) start below 0 s and %d end past their video's duration, in %d "
            "video(s) (first: %s); they are clipped to [0, duration]. Check the annotation "
            "file's times and durations if that is not expected.",
            below,
            past,
            len(affected),
            first,
        )


def _warn_validation_only_labels(database: Mapping[str, Any]) -> None:
    """One warning counting labels that occur in validation and never in training."""
    counts: dict[str, dict[str, int]] = {"training": {}, "validation": {}}
    for rec in database.values():
        if not isinstance(rec, Mapping) or rec.get("subset") not in counts:
            continue
        per_label = counts[str(rec.get("subset"))]
        for a in rec.get("annotations") or []:
            if isinstance(a, Mapping) and "label" in a:
                label = str(a["label"]).strip()
                per_label[label] = per_label.get(label, 0) + 1
    if not counts["training"]:
        return  # no training subset in this file: nothing to compare with
    only = sorted(set(counts["validation"]) - set(counts["training"]))
    if only:
        logger.warning(
            "%d label(s) occur only in the validation subset, never in training (%d "
            "instance(s)): %s; no model can learn them, so their AP is 0. Move some of their "
            "videos to training, or drop those labels.",
            len(only),
            sum(counts["validation"][label] for label in only),
            only[:10],
        )
