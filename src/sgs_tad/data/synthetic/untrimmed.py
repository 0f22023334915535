"""The untrimmed detection set: its configuration, the rendering of a video, and the writer.

See :mod:`sgs_tad.data.synthetic` for what the videos show and the files written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sgs_tad.data.synthetic.drawing import _bouncing_track, _composite, _gratings, _rest_track
from sgs_tad.data.synthetic.encoding import _encode, _pick_codec
from sgs_tad.data.synthetic.layout import _many_segments, _segments
from sgs_tad.data.synthetic.motions import SYNTHETIC_CLASSES, _pattern

logger = logging.getLogger(__name__)

#: Bumped whenever the rendering changes, so cached sets are regenerated.
GENERATOR_VERSION = 3

_ANNOTATION_FILE = "annotations.json"
_VIDEO_DIR = "videos"


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
