"""Drawing frames with numpy: panning backgrounds, the discs' tracks, and compositing.

Shared by both synthetic sets: :func:`_gratings` is the detection set's background,
:func:`_blobs` the trimmed-clip set's; :func:`_bouncing_track` moves the distractor,
:func:`_rest_track` the actor at rest, and :func:`_composite` draws the discs over the frames.
"""

from __future__ import annotations

import numpy as np


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold ``x`` into ``[lo, hi]`` as a point bouncing between two walls."""
    span = hi - lo
    m = np.mod(x - lo, 2 * span)
    return lo + span - np.abs(m - span)


def _gratings(
    rng: np.random.Generator, num_frames: int, size: int, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """The detection set's background: three coloured gratings panning together (a camera pan).

    Returns:
        ``float64 [F, size, size, 3]`` frames in ``[0, 1]``-ish intensities.
    """
    s = float(size)
    t = np.arange(num_frames, dtype=np.float64)
    pan = rng.uniform(-0.25, 0.25, size=2) * (size / 48)
    base = rng.uniform(0.25, 0.4) + rng.uniform(-0.05, 0.05, size=3)
    frames = np.broadcast_to(base, (num_frames, size, size, 3)).copy()
    for _ in range(3):
        wavelength = rng.uniform(0.15, 0.4) * s
        angle = rng.uniform(0, np.pi)
        f = np.array([np.cos(angle), np.sin(angle)]) * 2 * np.pi / wavelength
        phase = (
            f[0] * xx[None] + f[1] * yy[None] - (f @ pan) * t[:, None, None] + rng.uniform(0, 6.3)
        )
        gain = rng.uniform(0.01, 0.04, size=3)
        frames += np.sin(phase)[..., None] * gain
    return frames


def _blobs(
    rng: np.random.Generator, num_frames: int, size: int, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """The clip set's background: soft coloured blobs on a bluish base, drifting together.

    Another texture and palette than :func:`_gratings`, so that a model pretrained on clips
    meets new backgrounds in the detection set (as Kinetics-pretrained encoders meet
    ActivityNet).
    """
    s = float(size)
    t = np.arange(num_frames, dtype=np.float64)
    pan = rng.uniform(-0.3, 0.3, size=2) * (size / 48)
    base = np.array([0.12, 0.16, 0.3]) + rng.uniform(-0.04, 0.04, size=3)
    frames = np.broadcast_to(base, (num_frames, size, size, 3)).copy()
    for _ in range(4):
        cx = rng.uniform(0, s) + pan[0] * t
        cy = rng.uniform(0, s) + pan[1] * t
        width = rng.uniform(0.1, 0.25) * s
        gain = rng.uniform(-0.1, 0.12, size=3)
        d2 = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
        frames += np.exp(-d2 / (2 * width**2))[..., None] * gain
    return frames


def _bouncing_track(
    rng: np.random.Generator, num_frames: int, size: int, r0: float
) -> tuple[np.ndarray, np.ndarray]:
    """A distractor's centre: constant velocity, bouncing off the borders, ``(x, y)`` per frame."""
    s = float(size)
    t = np.arange(num_frames, dtype=np.float64)
    speed = rng.uniform(0.2, 0.5) * (size / 48)
    heading = rng.uniform(0, 2 * np.pi)
    dx = _reflect(rng.uniform(r0, s - r0) + speed * np.cos(heading) * t, r0, s - r0)
    dy = _reflect(rng.uniform(r0, s - r0) + speed * np.sin(heading) * t, r0, s - r0)
    return dx, dy


def _rest_track(
    rng: np.random.Generator, num_frames: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The actor's rest position: a slow drift in the middle of the frame, ``(x, y)``."""
    s = float(size)
    t = np.arange(num_frames, dtype=np.float64)
    lo, hi = 0.3 * s, 0.7 * s
    drift = rng.uniform(0.02, 0.08, size=2) * rng.choice([-1, 1], size=2) * (size / 48)
    ax = _reflect(rng.uniform(lo, hi) + drift[0] * t, lo, hi)
    # Rest lower in the frame: the orbit and the hop go up from the rest position.
    ay = _reflect(rng.uniform(lo + 0.05 * s, hi) + drift[1] * t, lo + 0.05 * s, hi)
    return ax, ay


def _composite(
    frames: np.ndarray,
    discs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    colour: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
) -> np.ndarray:
    """Draw anti-aliased discs ``(x, y, radius)`` per frame over ``frames``; ``uint8`` out."""
    for cx, cy, rad in discs:
        ddx = np.abs(xx[None] - cx[:, None, None])
        ddy = np.abs(yy[None] - cy[:, None, None])
        dist = np.sqrt(ddx**2 + ddy**2)
        alpha = np.clip(rad[:, None, None] + 0.5 - dist, 0.0, 1.0)[..., None]
        frames = frames * (1 - alpha) + colour * alpha
    return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)
