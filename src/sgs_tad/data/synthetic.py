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
total coverage (5-80 % of the video) and video length are drawn per video, as in ActivityNet;
``instances="many"`` draws many short instances instead, as in THUMOS (one per 2.5-5 s of
video, 0.75-2.5 s each; with ``classes_per_video="mixed"`` a video holds several classes).

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
    "CLIP_CLASSES",
    "SYNTHETIC_CLASSES",
    "SyntheticClipConfig",
    "SyntheticConfig",
    "generate_synthetic_clips",
    "generate_synthetic_dataset",
    "read_synthetic_clips",
    "render_clip",
    "render_video",
    "synthetic_video_dir",
]

logger = logging.getLogger(__name__)

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

#: Bumped whenever the rendering changes, so cached sets are regenerated.
GENERATOR_VERSION = 3
#: The same for the trimmed-clip set.
CLIP_GENERATOR_VERSION = 1

_ANNOTATION_FILE = "annotations.json"
_VIDEO_DIR = "videos"
_CLIP_FILE = "clips.json"
_CLIP_DIR = "clips"
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
    instances: Literal["few", "many"] = "few"

    def to_dict(self) -> dict[str, Any]:
        """The fields, without ``instances`` at its default ``"few"``.

        Sets written before ``instances`` existed were all ``"few"``: leaving it out keeps their
        fingerprint (so they are still reused) and their annotation files byte for byte.
        """
        fields = asdict(self)
        if self.instances == "few":
            del fields["instances"]
        return fields

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
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
    instances: Literal["few", "many"] = "few",
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
        instances: ``"few"``: 1-4 instances covering 5-80 % of the video (as in ActivityNet);
            ``"many"``: many short ones, one per 2.5-5 s of video on average (at least 2),
            0.75-2.5 s each, covering at most 60 % of it (as in THUMOS; see
            :func:`render_video`).

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
        instances=instances,
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
        frames, drawn = render_video(
            rng,
            size=size,
            fps=fps,
            num_classes=num_classes,
            min_duration=min_duration,
            max_duration=max_duration,
            first_class=first_class,
            mixed=classes_per_video == "mixed",
            instances=instances,
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
                {"segment": [s / fps, e / fps], "label": classes[c]} for s, e, c in drawn
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
            "config": cfg.to_dict(),
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
    if cfg.instances not in ("few", "many"):
        raise ValueError(
            f"instances must be 'few' (1-4 per video, ActivityNet-like) or 'many' (short ones "
            f"every few seconds, THUMOS-like); got {cfg.instances!r}."
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
    instances: Literal["few", "many"] = "few",
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Render one video with numpy.

    Args:
        rng: The video's generator (every draw comes from it).
        size: Frame height and width, pixels.
        fps: Frame rate.
        num_classes: Classes to draw from (the first of :data:`SYNTHETIC_CLASSES`).
        min_duration: Shortest video, seconds.
        max_duration: Longest video, seconds.
        first_class: Class of the first instance (of every instance unless ``mixed``).
        mixed: Draw a class for each instance after the first.
        instances: ``"few"`` (1-4, 5-80 % of the video) or ``"many"`` (short ones every few
            seconds), see :func:`generate_synthetic_dataset`.

    Returns:
        ``uint8`` frames ``[F, size, size, 3]`` and the instances ``[(start, end, class)]`` in
        frames (``end`` exclusive).
    """
    s = float(size)
    num_frames = round(rng.uniform(min_duration, max_duration) * fps)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    frames = _gratings(rng, num_frames, size, yy, xx)

    # One bright shape for every video and class, on a dull background: the shapes are easy to
    # see, and neither appearance nor the look-alike distractor tells the class.
    colour = np.array([1.0, 0.9, 0.2])
    r0 = rng.uniform(0.12, 0.15) * s
    dx, dy = _bouncing_track(rng, num_frames, size, r0)
    # Actor: a slowly drifting rest position plus the class pattern during instances.
    ax, ay = _rest_track(rng, num_frames, size)
    radius = np.full(num_frames, r0)
    drawn: list[tuple[int, int, int]] = []
    draw = _many_segments if instances == "many" else _segments
    for start, end in draw(rng, num_frames, fps):
        c = int(rng.integers(num_classes)) if mixed and drawn else first_class
        drawn.append((start, end, c))
        tau = np.arange(end - start, dtype=np.float64)
        period = rng.uniform(6, 11)
        amp = rng.uniform(0.16, 0.21) * s
        # Ramp in/out over 2 frames so the shape does not jump at the boundaries.
        env = np.clip(np.minimum(tau + 1, end - start - tau) / 2.0, 0, 1)
        ox, oy, scale = _pattern(SYNTHETIC_CLASSES[c], tau, period, amp, env)
        ax[start:end] += ox
        ay[start:end] += oy
        radius[start:end] *= scale
    discs = [(dx, dy, np.full(num_frames, r0)), (ax, ay, radius)]
    return _composite(frames, discs, colour, yy, xx), drawn


# ------------------------------------------------------------------------ trimmed clips


@dataclass(frozen=True)
class SyntheticClipConfig:
    """Everything that determines the trimmed-clip set (its fingerprint is stored in the JSON)."""

    num_clips: int = 1400
    seed: int = 0
    num_classes: int = len(CLIP_CLASSES)
    size: int = 48
    fps: int = 16
    num_frames: int = 16
    val_fraction: float = 0.1
    codec: str | None = None

    def fingerprint(self) -> str:
        blob = json.dumps({"version": CLIP_GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render_clip(rng: np.random.Generator, *, label: int, size: int, num_frames: int) -> np.ndarray:
    """Render one trimmed clip of :data:`CLIP_CLASSES` ``[label]`` with numpy.

    The drawing code is the detection set's (:func:`render_video`): an actor disc, a
    look-alike distractor bouncing around, a panning background. What differs is the look (a
    cyan shape, blob backgrounds in another palette) and the motions (:data:`CLIP_CLASSES`),
    which fill the whole clip, starting at a random phase.

    Returns:
        ``uint8`` frames ``[num_frames, size, size, 3]``.
    """
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    frames = _blobs(rng, num_frames, size, yy, xx)
    colour = np.array([0.25, 0.95, 1.0])
    r0 = rng.uniform(0.1, 0.16) * s
    dx, dy = _bouncing_track(rng, num_frames, size, r0)
    ax, ay = _rest_track(rng, num_frames, size)
    period = rng.uniform(6, 11)
    amp = rng.uniform(0.16, 0.21) * s
    tau = rng.uniform(0, period) + np.arange(num_frames, dtype=np.float64)
    ox, oy, scale = _pattern(CLIP_CLASSES[label], tau, period, amp, np.ones(num_frames))
    discs = [(dx, dy, np.full(num_frames, r0)), (ax + ox, ay + oy, r0 * scale)]
    return _composite(frames, discs, colour, yy, xx)


def generate_synthetic_clips(
    root: str | Path,
    *,
    num_clips: int = 1400,
    seed: int = 0,
    num_classes: int = len(CLIP_CLASSES),
    size: int = 48,
    fps: int = 16,
    num_frames: int = 16,
    val_fraction: float = 0.1,
    codec: str | None = None,
) -> Path:
    """Write (or reuse) a synthetic trimmed-clip action recognition set under ``root``.

    The pretraining task of ``examples/pretrain_encoder.py``, as Kinetics is for the paper's
    encoders: every clip is one action from start to end (no untrimmed timing), of the classes
    :data:`CLIP_CLASSES`, with another look and other backgrounds than the detection set of
    :func:`generate_synthetic_dataset`. Clip ``i`` has class ``i % num_classes`` (the classes
    are balanced) and is drawn from ``numpy.random.default_rng([seed, i])``; the validation
    clips are spread evenly over the ids as in the detection set.

    Files written under ``root``::

        root/clips.json           # {"classes": [...], "database": {id: {"label", "subset",
                                  #   "num_frames", "fps"}}, "sgs_tad_synthetic_clips": {...}}
        root/clips/c_<id>.mp4     # encoded as the detection set's videos

    Args:
        root: Output folder (created if needed).
        num_clips: Number of clips (>= ``num_classes``).
        seed: Seed of all random draws; the same seed gives identical files.
        num_classes: Number of classes, 1 to ``len(CLIP_CLASSES)`` (7).
        size: Frame height and width in pixels (even, >= 16).
        fps: Frame rate written into the files.
        num_frames: Frames per clip (>= 4).
        val_fraction: Fraction of clips in the ``"validation"`` subset.
        codec: PyAV encoder name, as in :func:`generate_synthetic_dataset`.

    Returns:
        The path of ``clips.json``.

    Example:
        >>> import tempfile
        >>> path = generate_synthetic_clips(tempfile.mkdtemp(), num_clips=7, size=16)
        >>> frames, labels, subsets, classes = read_synthetic_clips(path)
        >>> frames.shape, labels.tolist(), classes[:2]
        ((7, 16, 16, 16, 3), [0, 1, 2, 3, 4, 5, 6], ['swing_diag', 'swing_antidiag'])
    """
    cfg = SyntheticClipConfig(
        num_clips=num_clips,
        seed=seed,
        num_classes=num_classes,
        size=size,
        fps=fps,
        num_frames=num_frames,
        val_fraction=val_fraction,
        codec=codec,
    )
    _check_clip_config(cfg)
    root = Path(root)
    ann_path = root / _CLIP_FILE
    clip_dir = root / _CLIP_DIR
    if _clips_cached(ann_path, cfg):
        logger.info("reusing synthetic clip set at %s", ann_path)
        return ann_path
    clip_dir.mkdir(parents=True, exist_ok=True)
    codec_name = _pick_codec(codec)
    classes = CLIP_CLASSES[:num_classes]
    database: dict[str, Any] = {}
    for i in range(num_clips):
        rng = np.random.default_rng([seed, i])
        label = i % num_classes
        is_val = int((i + 1) * val_fraction) > int(i * val_fraction)
        frames = render_clip(rng, label=label, size=size, num_frames=num_frames)
        clip_id = f"clip_{i:05d}"
        _encode(clip_dir / f"c_{clip_id}.mp4", frames, fps=fps, codec=codec_name)
        database[clip_id] = {
            "subset": "validation" if is_val else "training",
            "label": classes[label],
            "num_frames": num_frames,
            "fps": fps,
        }
    data = {
        "version": f"sgs_tad synthetic clips v{CLIP_GENERATOR_VERSION}",
        "classes": list(classes),
        "database": database,
        "sgs_tad_synthetic_clips": {
            "fingerprint": cfg.fingerprint(),
            "config": asdict(cfg),
            "codec": codec_name,
            "clip_dir": _CLIP_DIR,
        },
    }
    tmp = ann_path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, ann_path)
    return ann_path


def read_synthetic_clips(
    path: str | Path,
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Decode every clip of a set written by :func:`generate_synthetic_clips`.

    Args:
        path: Its ``clips.json``.

    Returns:
        ``(frames, labels, subsets, classes)``: ``uint8 [N, F, H, W, 3]``, ``int64 [N]`` class
        indices into ``classes``, and each clip's subset, in clip-id order.
    """
    from sgs_tad.data.video import decode_video_frames

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no clip set at {path}; write one with "
            "sgs_tad.data.synthetic.generate_synthetic_clips(root), which creates root/clips.json"
        )
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    classes = list(data["classes"])
    clip_dir = path.parent / data["sgs_tad_synthetic_clips"]["clip_dir"]
    ids = sorted(data["database"])
    frames = np.stack(
        [
            decode_video_frames(
                clip_dir / f"c_{cid}.mp4", list(range(int(data["database"][cid]["num_frames"])))
            )
            for cid in ids
        ]
    )
    labels = np.array([classes.index(data["database"][cid]["label"]) for cid in ids])
    subsets = [str(data["database"][cid]["subset"]) for cid in ids]
    return frames, labels.astype(np.int64), subsets, classes


def _check_clip_config(cfg: SyntheticClipConfig) -> None:
    if not 1 <= cfg.num_classes <= len(CLIP_CLASSES):
        raise ValueError(
            f"num_classes must be in [1, {len(CLIP_CLASSES)}] (the patterns {CLIP_CLASSES}); "
            f"got {cfg.num_classes}."
        )
    if cfg.num_clips < cfg.num_classes:
        raise ValueError(
            f"num_clips must be >= num_classes = {cfg.num_classes} (one clip per class at "
            f"least); got {cfg.num_clips}."
        )
    if cfg.size < 16 or cfg.size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p); got {cfg.size}.")
    if cfg.num_frames < 4:
        raise ValueError(f"num_frames must be >= 4 (one snippet); got {cfg.num_frames}.")
    if cfg.fps < 1:
        raise ValueError(f"fps must be >= 1; got {cfg.fps}.")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {cfg.val_fraction}.")


def _clips_cached(ann_path: Path, cfg: SyntheticClipConfig) -> bool:
    if not ann_path.is_file():
        return False
    try:
        with open(ann_path, encoding="utf-8") as f:
            data = json.load(f)
        meta = data["sgs_tad_synthetic_clips"]
        if meta["fingerprint"] != cfg.fingerprint():
            return False
        clip_dir = ann_path.parent / meta["clip_dir"]
        return all((clip_dir / f"c_{cid}.mp4").is_file() for cid in data["database"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
