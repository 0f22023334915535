"""The motion classes of the synthetic sets and the actor's movement for each.

:data:`SYNTHETIC_CLASSES` are the detection set's classes, :data:`CLIP_CLASSES` the trimmed-clip
set's; :func:`_pattern` gives the actor's offsets and size over time for any of them.
"""

from __future__ import annotations

import numpy as np

#: Class names in order; ``num_classes=k`` uses the first k.
SYNTHETIC_CLASSES: tuple[str, ...] = ("swing_h", "swing_v", "orbit", "pulse", "hop", "orbit_ccw")

#: Classes of the trimmed-clip set (:func:`generate_synthetic_clips`), the pretraining task:
#: motions related to the detection classes but none of them (diagonal instead of horizontal or
#: vertical swings, flat ellipses instead of circles, shrinking instead of growing, dips instead
#: of hops), plus a clip where the actor only drifts.
CLIP_CLASSES: tuple[str, ...] = (
    "swing_diag",
    "swing_antidiag",
    "ellipse",
    "ellipse_ccw",
    "throb",
    "dip",
    "still",
)


def _pattern(
    name: str, tau: np.ndarray, period: float, amp: float, env: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets ``(dx, dy)`` of the actor and its radius factor while it performs ``name``.

    Args:
        name: A class of :data:`SYNTHETIC_CLASSES` or :data:`CLIP_CLASSES`.
        tau: Frame times since the pattern's start (any phase).
        period: Period of the pattern, frames.
        amp: Amplitude, pixels.
        env: Envelope in ``[0, 1]`` per frame (ramps at the boundaries).

    Returns:
        ``(dx, dy, radius_factor)``, each ``[len(tau)]``; the offsets are already multiplied by
        ``env``.
    """
    w = 2 * np.pi * tau / period
    zero = np.zeros_like(tau)
    ox, oy, scale = zero, zero, np.ones_like(tau)
    if name == "swing_h":
        ox = amp * np.sin(w)
    elif name == "swing_v":
        oy = amp * np.sin(w)
    elif name in ("orbit", "orbit_ccw"):
        sign = 1.0 if name == "orbit" else -1.0
        # A circle through the rest position (its centre is above it).
        ox, oy = 0.7 * amp * sign * np.sin(w), 0.7 * amp * (np.cos(w) - 1)
    elif name == "pulse":
        scale = 1 + 0.7 * env * np.sin(w / 2) ** 2
    elif name == "hop":
        oy = -amp * np.abs(np.sin(w / 2))
    elif name in ("swing_diag", "swing_antidiag"):
        sign = 1.0 if name == "swing_diag" else -1.0
        ox, oy = 0.7 * amp * np.sin(w), -sign * 0.7 * amp * np.sin(w)
    elif name in ("ellipse", "ellipse_ccw"):
        sign = 1.0 if name == "ellipse" else -1.0
        # Wide and flat, centred on the rest position.
        ox, oy = amp * sign * np.sin(w), 0.4 * amp * np.cos(w)
    elif name == "throb":
        # Shrinks (where "pulse" grows), twice as often.
        scale = 1 - 0.45 * env * np.sin(w) ** 2
    elif name == "dip":
        oy = 0.7 * amp * np.abs(np.sin(w / 2))
    elif name != "still":
        raise ValueError(
            f"unknown motion pattern {name!r}; known: {SYNTHETIC_CLASSES + CLIP_CLASSES}."
        )
    return env * ox, env * oy, scale
