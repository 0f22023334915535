"""Checks of a data set against what its files hold: durations, feature layout, bad videos.

Run when :class:`~sgs_tad.data.ActivityNetDataset` is built (durations, feature layout) and
while it is read (the bound on videos that fail to decode).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

from sgs_tad.data.annotations import VideoAnnotation
from sgs_tad.data.failures import BadVideoLimit
from sgs_tad.data.video import MediaInfo

__all__ = ["bad_video_limit", "check_feature_layout", "warn_duration_mismatch"]

logger = logging.getLogger("sgs_tad.data.dataset")  # the data set's warnings, one logger


def check_feature_layout(
    kept: list[tuple[VideoAnnotation, MediaInfo]],
    feature_dim: int | None,
    skipped: Counter[str],
    on_error: str,
) -> list[tuple[VideoAnnotation, MediaInfo]]:
    """Refuse feature files saved ``[C, T]`` (read as ``[T, C]`` they would be transposed).

    C is ``feature_dim`` when given, else the second dimension every file shares; failing
    that, the first dimension every file shares (a set saved all transposed), else the most
    common second dimension.

    Returns:
        ``kept`` without the refused files (``on_error="skip"``; each counted in ``skipped``
        and logged).

    Raises:
        ValueError: naming the file, its shape and the fix (``on_error="raise"``).
    """
    shapes = [m.shape for _, m in kept if m.shape is not None]
    expected = feature_dim
    if expected is None and len(shapes) >= 2:
        firsts, seconds = Counter(s[0] for s in shapes), Counter(s[1] for s in shapes)
        if len(seconds) == 1:
            expected = shapes[0][1]
        elif len(firsts) == 1:  # every file shares its first dimension: all are [C, T]
            expected = shapes[0][0]
        else:
            expected = seconds.most_common(1)[0][0]
    if expected is None:
        return kept
    out: list[tuple[VideoAnnotation, MediaInfo]] = []
    for video, info in kept:
        shape = info.shape
        if shape is None or shape[1] == expected:
            out.append((video, info))
            continue
        if shape[0] == expected:
            problem = (
                f"feature file {str(info.path)!r} of video {video.video_id!r} has shape "
                f"{tuple(shape)}: it looks saved as [C, T] with C={expected}, but features "
                f"are read as [T, C]. Save it transposed: np.save(path, features.T)"
            )
            reason = "transposed features"
        else:
            problem = (
                f"feature file {str(info.path)!r} of video {video.video_id!r} has shape "
                f"{tuple(shape)}; expected [T, {expected}] (C={expected}"
                + (" from feature_dim" if feature_dim is not None else ", as the other files")
                + "). Re-extract it with the same encoder as the others"
            )
            reason = "feature size"
        if on_error == "raise":
            raise ValueError(problem + ", or pass on_error='skip' to drop it.")
        skipped[reason] += 1
        logger.warning("skipping: %s.", problem)
    return out


def bad_video_limit(max_bad_videos: int | float | None, total: int) -> BadVideoLimit | None:
    if max_bad_videos is None:
        return None
    if isinstance(max_bad_videos, bool) or not isinstance(max_bad_videos, (int, float)):
        raise TypeError(
            f"max_bad_videos must be an int, a float in [0, 1] or None; got {max_bad_videos!r}."
        )
    if isinstance(max_bad_videos, float):
        if not 0.0 <= max_bad_videos <= 1.0:
            raise ValueError(
                f"max_bad_videos as a float is a fraction of the videos, in [0, 1]; got "
                f"{max_bad_videos!r}. Pass an int for a count."
            )
        limit = math.ceil(max_bad_videos * total)
    elif max_bad_videos < 0:
        raise ValueError(f"max_bad_videos must be >= 0 or None; got {max_bad_videos!r}.")
    else:
        limit = max_bad_videos
    return BadVideoLimit(limit, total=total)


# Annotated and real durations may differ by this much (both) before a warning: ActivityNet's
# durations come from the web page, the files are re-encodes, and a few frames apart is normal.
_DURATION_TOLERANCE_S = 1.0
_DURATION_TOLERANCE_FRACTION = 0.05


def warn_duration_mismatch(kept: Sequence[tuple[VideoAnnotation, MediaInfo]]) -> None:
    """One warning naming the videos whose annotated duration is not their real length."""
    bad: list[str] = []
    for video, info in kept:
        fps = info.fps or video.fps
        if not fps or info.num_frames <= 0:
            continue
        real = info.num_frames / fps
        diff = abs(real - video.duration)
        if diff > _DURATION_TOLERANCE_S and diff > _DURATION_TOLERANCE_FRACTION * video.duration:
            bad.append(
                f"video {video.video_id!r} ({str(info.path)!r}): annotated "
                f"{video.duration:.2f} s, the file holds {real:.2f} s "
                f"({info.num_frames} frames at {fps:g} fps)"
            )
    if bad:
        logger.warning(
            "%d video(s) whose annotation duration disagrees with the file's length: %s%s. "
            "Segments are placed as fractions of the annotated duration, so they would land in "
            "the wrong place: fix the 'duration' in the annotation file, or replace the file.",
            len(bad),
            "; ".join(bad[:5]),
            f"; and {len(bad) - 5} more" if len(bad) > 5 else "",
        )
