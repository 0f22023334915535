"""Synthetic untrimmed videos with known action segments, written in the ActivityNet layout.

The default data set of the examples: small enough to generate in seconds and learn on a CPU in
minutes, built so that *what* happens is carried by motion, not by appearance.

Every video shows, on a textured background that drifts (a camera pan), two identical bright
discs (the same in every video): the **actor** and a **distractor**. The distractor glides at
constant speed and bounces off the borders for the whole video. The actor rests (drifting
slowly) except during action instances, where it performs its class's pattern:

============  ==========================================================
class         pattern during an instance (period and amplitude vary)
============  ==========================================================
``swing_h``   fast left-right oscillation
``swing_v``   fast up-down oscillation
``orbit``     circular motion (clockwise)
``pulse``     the shape grows and shrinks in place
``hop``       repeated hops upwards
``orbit_ccw`` circular motion (counter-clockwise)
============  ==========================================================

Appearance is the same for all classes and videos, so a classifier has to look at motion (and
cannot memorise a video's look, which matters with a few dozen training videos), and the action
boundaries are where the actor starts and stops moving. Instance count (1-4),
total coverage (5-80 % of the video) and video length are drawn per video.

Files written under ``root``::

    root/annotations.json       # ActivityNet format, plus a "sgs_tad_synthetic" config block
    root/videos/v_<id>.mp4      # H.264 (libx264), or MPEG-4 Part 2 where libx264 is missing

Randomness: video ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` (rendering is numpy
code), so a video does not change when ``num_videos`` does, and nothing touches global RNG.
Generation is cached: when ``annotations.json`` exists with the same config fingerprint and all
videos are present, nothing is written.

Example:
    >>> import tempfile
    >>> from sgs_tad.data import load_annotations
    >>> path = generate_synthetic_dataset(tempfile.mkdtemp(), num_videos=2, min_duration=2.0,
    ...                                   max_duration=2.0, size=32)
    >>> sorted(p.name for p in synthetic_video_dir(path).iterdir())
    ['v_synth_0000.mp4', 'v_synth_0001.mp4']
    >>> [v.subset for v in load_annotations(path).videos]
    ['training', 'training']
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "SYNTHETIC_CLASSES",
    "SyntheticConfig",
    "generate_synthetic_dataset",
    "render_video",
    "synthetic_video_dir",
]

logger = logging.getLogger(__name__)

#: Class names in order; ``num_classes=k`` uses the first k.
SYNTHETIC_CLASSES: tuple[str, ...] = ("swing_h", "swing_v", "orbit", "pulse", "hop", "orbit_ccw")

#: Bumped whenever the rendering changes, so cached sets are regenerated.
GENERATOR_VERSION = 3

_ANNOTATION_FILE = "annotations.json"
_VIDEO_DIR = "videos"
_MIN_GAP_FRAMES = 4


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the generated set (its fingerprint is stored in the JSON)."""

    num_videos: int = 48
    seed: int = 0
    num_classes: int = 4
    size: int = 48
    fps: int = 16
    min_duration: float = 8.0
    max_duration: float = 16.0
    val_fraction: float = 0.25
    classes_per_video: Literal["one", "mixed"] = "one"
    codec: str | None = None

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def synthetic_video_dir(annotation_path: str | Path) -> Path:
    """The folder holding the videos of the set whose annotation file is ``annotation_path``."""
    return Path(annotation_path).parent / _VIDEO_DIR


def generate_synthetic_dataset(
    root: str | Path,
    *,
    num_videos: int = 48,
    seed: int = 0,
    num_classes: int = 4,
    size: int = 48,
    fps: int = 16,
    min_duration: float = 8.0,
    max_duration: float = 16.0,
    val_fraction: float = 0.25,
    classes_per_video: Literal["one", "mixed"] = "one",
    codec: str | None = None,
) -> Path:
    """Write (or reuse) a synthetic ActivityNet-format data set under ``root``.

    Args:
        root: Output folder (created if needed).
        num_videos: Number of videos.
        seed: Seed of all random draws; the same seed gives identical files.
        num_classes: Number of action classes, 1 to ``len(SYNTHETIC_CLASSES)`` (6).
        size: Frame height and width in pixels (even, >= 16).
        fps: Frame rate.
        min_duration: Shortest video, seconds.
        max_duration: Longest video, seconds.
        val_fraction: Fraction of videos in the ``"validation"`` subset, spread evenly over the
            ids; the rest are ``"training"``. Classes are balanced within each subset.
        classes_per_video: ``"one"``: all instances of a video share a class (as in
            ActivityNet); ``"mixed"``: each instance draws its own class (as in THUMOS).
        codec: PyAV encoder name; ``None`` tries ``mpeg4`` then ``libx264``. MPEG-4 part 2
            comes first because its output is byte-identical run to run; libx264 was not here
            (about one file in twenty differed between identical runs, even single-threaded).

    Returns:
        The path of ``annotations.json``; videos are in :func:`synthetic_video_dir` of it.
    """
    cfg = SyntheticConfig(
        num_videos=num_videos,
        seed=seed,
        num_classes=num_classes,
        size=size,
        fps=fps,
        min_duration=min_duration,
        max_duration=max_duration,
        val_fraction=val_fraction,
        classes_per_video=classes_per_video,
        codec=codec,
    )
    _check_config(cfg)
    root = Path(root)
    ann_path = root / _ANNOTATION_FILE
    video_dir = root / _VIDEO_DIR
    if _cached(ann_path, cfg):
        logger.info("reusing synthetic data set at %s", ann_path)
        return ann_path
    video_dir.mkdir(parents=True, exist_ok=True)
    codec_name = _pick_codec(codec)
    classes = SYNTHETIC_CLASSES[:num_classes]
    database: dict[str, Any] = {}
    subset_counts = {"training": 0, "validation": 0}
    for i in range(num_videos):
        rng = np.random.default_rng([seed, i])
        is_val = int((i + 1) * val_fraction) > int(i * val_fraction)
        subset = "validation" if is_val else "training"
        first_class = subset_counts[subset] % num_classes
        subset_counts[subset] += 1
        frames, instances = render_video(
            rng,
            size=size,
            fps=fps,
            num_classes=num_classes,
            min_duration=min_duration,
            max_duration=max_duration,
            first_class=first_class,
            mixed=classes_per_video == "mixed",
        )
        video_id = f"synth_{i:04d}"
        _encode(video_dir / f"v_{video_id}.mp4", frames, fps=fps, codec=codec_name)
        num_frames = int(frames.shape[0])
        database[video_id] = {
            "subset": subset,
            "duration": num_frames / fps,
            "fps": fps,
            "num_frames": num_frames,
            "resolution": f"{size}x{size}",
            "url": "",
            "annotations": [
                {"segment": [s / fps, e / fps], "label": classes[c]} for s, e, c in instances
            ],
        }
    data = {
        "version": f"sgs_tad synthetic v{GENERATOR_VERSION}",
        "taxonomy": [
            {"nodeName": c, "nodeId": k, "parentName": "root"} for k, c in enumerate(classes)
        ],
        "database": database,
        "sgs_tad_synthetic": {
            "fingerprint": cfg.fingerprint(),
            "config": asdict(cfg),
            "codec": codec_name,
            "video_dir": _VIDEO_DIR,
        },
    }
    # Written last and atomically: an interrupted run leaves no file that looks complete.
    tmp = ann_path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, ann_path)
    return ann_path


def _check_config(cfg: SyntheticConfig) -> None:
    if not cfg.num_videos >= 1:
        raise ValueError(f"num_videos must be >= 1; got {cfg.num_videos}.")
    if not 1 <= cfg.num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(
            f"num_classes must be in [1, {len(SYNTHETIC_CLASSES)}] (the patterns "
            f"{SYNTHETIC_CLASSES}); got {cfg.num_classes}."
        )
    if cfg.size < 16 or cfg.size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p); got {cfg.size}.")
    if cfg.fps < 4:
        raise ValueError(f"fps must be >= 4; got {cfg.fps}.")
    if not 0 < cfg.min_duration <= cfg.max_duration:
        raise ValueError(
            f"need 0 < min_duration <= max_duration; got {cfg.min_duration}, {cfg.max_duration}."
        )
    if cfg.min_duration * cfg.fps < 32:
        raise ValueError(
            f"min_duration * fps = {cfg.min_duration * cfg.fps:g} frames; need >= 32 so that "
            "1-4 instances and the gaps between them fit. Raise min_duration or fps."
        )
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {cfg.val_fraction}.")
    if cfg.classes_per_video not in ("one", "mixed"):
        raise ValueError(
            f"classes_per_video must be 'one' or 'mixed'; got {cfg.classes_per_video!r}."
        )


def _cached(ann_path: Path, cfg: SyntheticConfig) -> bool:
    if not ann_path.is_file():
        return False
    try:
        with open(ann_path, encoding="utf-8") as f:
            data = json.load(f)
        meta = data["sgs_tad_synthetic"]
        if meta["fingerprint"] != cfg.fingerprint():
            return False
        video_dir = ann_path.parent / meta["video_dir"]
        return all((video_dir / f"v_{vid}.mp4").is_file() for vid in data["database"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _pick_codec(codec: str | None) -> str:
    import av

    candidates = [codec] if codec is not None else ["mpeg4", "libx264"]
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise ValueError(
        f"no usable video encoder among {candidates!r} in this PyAV/FFmpeg build; "
        f"available: pass codec= one of {sorted(c for c in av.codecs_available)[:20]!r}..."
    )


def _encode(path: Path, frames: np.ndarray, *, fps: int, codec: str) -> None:
    """Encode ``uint8 [F, H, W, 3]`` frames; key frame every second so that seeking is cheap."""
    import av

    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream(codec, rate=Fraction(fps))
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # threads=1: byte-identical output for the same frames (and the box is shared).
            stream.options = {
                "crf": "10",
                "preset": "veryfast",
                "g": str(fps),
                "threads": "1",
                # The "threads" option alone still left x264's lookahead threaded here (one
                # file in a few differed between identical runs); x264-params pins both.
                "x264-params": "threads=1:lookahead-threads=1",
            }
            stream.codec_context.thread_count = 1
            stream.codec_context.thread_type = "NONE"
        else:
            stream.bit_rate = 4_000_000
            stream.options = {"g": str(fps)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold ``x`` into ``[lo, hi]`` as a point bouncing between two walls."""
    span = hi - lo
    m = np.mod(x - lo, 2 * span)
    return lo + span - np.abs(m - span)


def _segments(rng: np.random.Generator, num_frames: int, fps: int) -> list[tuple[int, int]]:
    """Draw 1-4 instances covering 5-80 % of the video, with gaps of >= 4 frames between them."""
    k = int(rng.integers(1, 5))
    coverage = float(rng.uniform(0.05, 0.8))
    min_len = max(8, round(0.75 * fps))
    total = max(min_len, round(coverage * num_frames))
    k = max(1, min(k, total // min_len))
    lengths = min_len + np.floor(rng.dirichlet(np.full(k, 2.0)) * (total - k * min_len))
    lengths = lengths.astype(int)
    free = num_frames - int(lengths.sum()) - (k - 1) * _MIN_GAP_FRAMES
    gaps = np.floor(rng.dirichlet(np.ones(k + 1)) * free).astype(int)
    gaps[1:-1] += _MIN_GAP_FRAMES
    out = []
    t = int(gaps[0])
    for j in range(k):
        out.append((t, t + int(lengths[j])))
        t += int(lengths[j]) + int(gaps[j + 1])
    return out


def render_video(
    rng: np.random.Generator,
    *,
    size: int,
    fps: int,
    num_classes: int,
    min_duration: float,
    max_duration: float,
    first_class: int,
    mixed: bool,
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Render one video with numpy.

    Returns:
        ``uint8`` frames ``[F, size, size, 3]`` and the instances ``[(start, end, class)]`` in
        frames (``end`` exclusive).
    """
    s = float(size)
    num_frames = round(rng.uniform(min_duration, max_duration) * fps)
    t = np.arange(num_frames, dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    # Background: three coloured gratings panning together (a moving camera).
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

    # One bright shape for every video and class, on a dull background: the shapes are easy to
    # see, and neither appearance nor the look-alike distractor tells the class.
    colour = np.array([1.0, 0.9, 0.2])
    r0 = rng.uniform(0.12, 0.15) * s

    # Distractor: constant velocity, bouncing off the borders, for the whole video.
    speed = rng.uniform(0.2, 0.5) * (size / 48)
    heading = rng.uniform(0, 2 * np.pi)
    dx = _reflect(rng.uniform(r0, s - r0) + speed * np.cos(heading) * t, r0, s - r0)
    dy = _reflect(rng.uniform(r0, s - r0) + speed * np.sin(heading) * t, r0, s - r0)

    # Actor: a slowly drifting rest position plus the class pattern during instances.
    lo, hi = 0.3 * s, 0.7 * s
    drift = rng.uniform(0.02, 0.08, size=2) * rng.choice([-1, 1], size=2) * (size / 48)
    ax = _reflect(rng.uniform(lo, hi) + drift[0] * t, lo, hi)
    # Rest lower in the frame: the orbit and the hop go up from the rest position.
    ay = _reflect(rng.uniform(lo + 0.05 * s, hi) + drift[1] * t, lo + 0.05 * s, hi)
    radius = np.full(num_frames, r0)
    instances: list[tuple[int, int, int]] = []
    for start, end in _segments(rng, num_frames, fps):
        c = int(rng.integers(num_classes)) if mixed and instances else first_class
        instances.append((start, end, c))
        tau = np.arange(end - start, dtype=np.float64)
        period = rng.uniform(6, 11)
        amp = rng.uniform(0.16, 0.21) * s
        # Ramp in/out over 2 frames so the shape does not jump at the boundaries.
        env = np.clip(np.minimum(tau + 1, end - start - tau) / 2.0, 0, 1)
        w = 2 * np.pi * tau / period
        ox = oy = np.zeros_like(tau)
        if SYNTHETIC_CLASSES[c] == "swing_h":
            ox = amp * np.sin(w)
        elif SYNTHETIC_CLASSES[c] == "swing_v":
            oy = amp * np.sin(w)
        elif SYNTHETIC_CLASSES[c] in ("orbit", "orbit_ccw"):
            sign = 1.0 if SYNTHETIC_CLASSES[c] == "orbit" else -1.0
            # A circle through the rest position (its centre is above it).
            ox, oy = 0.7 * amp * sign * np.sin(w), 0.7 * amp * (np.cos(w) - 1)
        elif SYNTHETIC_CLASSES[c] == "pulse":
            radius[start:end] = r0 * (1 + 0.7 * env * np.sin(w / 2) ** 2)
        elif SYNTHETIC_CLASSES[c] == "hop":
            oy = -amp * np.abs(np.sin(w / 2))
        ax[start:end] += env * ox
        ay[start:end] += env * oy

    for cx, cy, rad in ((dx, dy, np.full(num_frames, r0)), (ax, ay, radius)):
        ddx = np.abs(xx[None] - cx[:, None, None])
        ddy = np.abs(yy[None] - cy[:, None, None])
        dist = np.sqrt(ddx**2 + ddy**2)
        alpha = np.clip(rad[:, None, None] + 0.5 - dist, 0.0, 1.0)[..., None]
        frames = frames * (1 - alpha) + colour * alpha
    out = np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, instances
