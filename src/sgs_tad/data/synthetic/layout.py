"""Laying action instances out in a video's time: how many, how long, and where.

:func:`_segments` draws ActivityNet-like instances (``instances="few"``), :func:`_many_segments`
THUMOS-like ones (``instances="many"``); both place them with :func:`_place`.
"""

from __future__ import annotations

import numpy as np

_MIN_GAP_FRAMES = 4


def _place(
    rng: np.random.Generator, lengths: np.ndarray, num_frames: int
) -> list[tuple[int, int]]:
    """Lay instances of ``lengths`` frames out in order, random gaps of >= 4 frames between."""
    k = len(lengths)
    free = num_frames - int(lengths.sum()) - (k - 1) * _MIN_GAP_FRAMES
    gaps = np.floor(rng.dirichlet(np.ones(k + 1)) * free).astype(int)
    gaps[1:-1] += _MIN_GAP_FRAMES
    out = []
    t = int(gaps[0])
    for j in range(k):
        out.append((t, t + int(lengths[j])))
        t += int(lengths[j]) + int(gaps[j + 1])
    return out


def _segments(rng: np.random.Generator, num_frames: int, fps: int) -> list[tuple[int, int]]:
    """Draw 1-4 instances covering 5-80 % of the video, with gaps of >= 4 frames between them."""
    k = int(rng.integers(1, 5))
    coverage = float(rng.uniform(0.05, 0.8))
    min_len = max(8, round(0.75 * fps))
    total = max(min_len, round(coverage * num_frames))
    k = max(1, min(k, total // min_len))
    lengths = min_len + np.floor(rng.dirichlet(np.full(k, 2.0)) * (total - k * min_len))
    lengths = lengths.astype(int)
    return _place(rng, lengths, num_frames)


#: ``instances="many"``: instances per second of video (drawn per video), and instance length
#: in seconds (drawn per instance).
_MANY_DENSITY = (0.2, 0.4)
_MANY_LENGTH_S = (0.75, 2.5)
#: ...covering at most this fraction of the video (instances are dropped until they fit).
_MANY_MAX_COVERAGE = 0.6


def _many_segments(rng: np.random.Generator, num_frames: int, fps: int) -> list[tuple[int, int]]:
    """Draw many short instances (THUMOS-like), with gaps of >= 4 frames between them."""
    density = float(rng.uniform(*_MANY_DENSITY))
    k = max(2, round(density * num_frames / fps))
    lengths = np.maximum(8, np.round(rng.uniform(*_MANY_LENGTH_S, size=k) * fps)).astype(int)
    budget = _MANY_MAX_COVERAGE * num_frames
    while k > 1 and lengths[:k].sum() + (k - 1) * _MIN_GAP_FRAMES > budget:
        k -= 1
    lengths = np.minimum(lengths[:k], int(budget))
    return _place(rng, lengths, num_frames)
