"""The trimmed-clip set (pretraining): its configuration, the rendering of a clip, writer, reader.

Clips are drawn with the detection set's code (:mod:`sgs_tad.data.synthetic.drawing`), with
another look and the motions of :data:`CLIP_CLASSES`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgs_tad.data.synthetic.drawing import _blobs, _bouncing_track, _composite, _rest_track
from sgs_tad.data.synthetic.encoding import _encode, _pick_codec
from sgs_tad.data.synthetic.motions import CLIP_CLASSES, _pattern

logger = logging.getLogger(__name__)

#: Bumped whenever the rendering of clips changes, so cached sets are regenerated.
CLIP_GENERATOR_VERSION = 1

_CLIP_FILE = "clips.json"
_CLIP_DIR = "clips"


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
