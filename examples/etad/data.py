"""The main job's data: where it lies, the synthetic set it generates, and how it is read.

:func:`prepare_data` generates the synthetic set (and pretrains the encoder for
``--pretrained auto``) on rank 0 and returns :func:`data_paths`; :func:`dataset_options` are
the ``ActivityNetDataset`` options of a run, :func:`windowed` its ``--layout thumos`` sliding
windows, :func:`collate` the trainer's batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

from pretrain_encoder import pretrain_encoder
from sgs_tad.data import (
    ActivityNetDataset,
    WindowedDataset,
    generate_synthetic_dataset,
    synthetic_video_dir,
)
from sgs_tad.training.distributed import barrier

from .options import THUMOS, fail, pretrain_config, pretrains

log = logging.getLogger("etad_anet")

#: Pixel statistics of the synthetic set, used by the data path (float32) and by the encoder
#: (uint8 input is normalised on the device with the same numbers).
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.25, 0.25, 0.25)


def data_paths(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """(annotation file, media root, mode) of the run's arguments."""
    if args.features is not None:
        return Path(args.annotations), Path(args.features), "features"
    if args.annotations is not None:
        return Path(args.annotations), Path(args.data_root), "video"
    ann = Path(args.data_root) / "annotations.json"
    return ann, synthetic_video_dir(ann), "video"


#: What a folder of the synthetic set may hold besides its own files (a killed generator's
#: temporary annotation file, a desktop's metadata).
_SYNTHETIC_VIDEO = re.compile(r"^v_synth_\d{4}\.mp4$")
_HARMLESS = {".DS_Store", "annotations.json.tmp"}


def check_synthetic_root(root: Path) -> None:
    """Refuse to generate the synthetic set into a folder that holds anything else.

    ``--data-root`` without ``--annotations`` is where the synthetic set is written (or
    reused); a folder holding the user's own ``annotations.json`` or videos would be
    overwritten by it. Every rank checks, before anything is written.
    """
    if not root.exists():
        return
    if not root.is_dir():
        fail(f"--data-root {root} is a file; pass a folder for the synthetic set (or "
             "--annotations FILE.json with --data-root VIDEOS_DIR for your own data)")  # fmt: skip
    found = []
    ann = root / "annotations.json"
    if ann.exists():
        try:
            synthetic = "sgs_tad_synthetic" in json.loads(ann.read_bytes())
        except (OSError, ValueError, TypeError):
            synthetic = False
        if not synthetic:
            found.append("annotations.json (not a synthetic set)")
    videos = root / "videos"
    if videos.is_dir():
        others = [p.name for p in videos.iterdir() if not _SYNTHETIC_VIDEO.match(p.name)
                  and p.name not in _HARMLESS]  # fmt: skip
        if others:
            found.append(f"videos/ with {len(others)} file(s) of its own (first: {others[0]})")
    elif videos.exists():
        found.append("a file named videos")
    extra = [p.name for p in root.iterdir()
             if p.name not in {"annotations.json", "videos", *_HARMLESS}]  # fmt: skip
    if extra:
        found.append(f"{len(extra)} other entr{'y' if len(extra) == 1 else 'ies'} "
                     f"(first: {extra[0]})")  # fmt: skip
    if found:
        fail(f"--data-root {root} holds {' and '.join(found)}, and without --annotations the "
             "synthetic set would be written there over them; to train on that data pass "
             f"--annotations {ann} --data-root {videos}, or give the synthetic set an empty or "
             "new --data-root")  # fmt: skip


def prepare_data(args: argparse.Namespace, rank: int) -> tuple[Path, Path, str]:
    """:func:`data_paths`; rank 0 first generates the synthetic set if it is the one used."""
    if args.features is None and args.annotations is None:
        check_synthetic_root(Path(args.data_root))
        if rank == 0:
            log.info("synthetic data set: %s (%d videos)", args.data_root, args.num_videos)
            generate_synthetic_dataset(args.data_root, **synthetic_options(args))
        barrier("waiting for rank 0 to generate the synthetic data set")
    if pretrains(args):
        if rank == 0:
            log.info("pretrained encoder: %s", args.weights)
            pretrain_encoder(pretrain_config(args), args.weights)
        barrier("waiting for rank 0 to pretrain the encoder")
    return data_paths(args)


def synthetic_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate_synthetic_dataset`` options of the run's synthetic set (its layout's)."""
    options: dict[str, Any] = dict(num_videos=args.num_videos, seed=args.data_seed,
                                   val_fraction=args.val_fraction)  # fmt: skip
    if args.layout == "thumos":
        options.update(classes_per_video="mixed", instances="many",
                       min_duration=THUMOS["min_duration"],
                       max_duration=THUMOS["max_duration"])  # fmt: skip
    return options


def dataset_options(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    # thumos: num_snippets=None takes snippets back to back (a fixed stride of
    # --snippet-length frames), however long the video
    thumos = args.layout == "thumos"
    cache = int(getattr(args, "decode_cache_mb", 256) * 2**20)
    cuda = str(args.device).startswith("cuda")
    bad = getattr(args, "max_bad_videos", 0.1)
    return dict(mode=mode, num_snippets=None if thumos else args.num_snippets,
                snippet_length=args.snippet_length, size=args.size, mean=PIXEL_MEAN,
                std=PIXEL_STD, decode_cache_bytes=cache, dtype=pixel_dtype(args),
                pin_memory=cuda, decode_in_workers=getattr(args, "decode_workers", 0) > 0,
                worker_decode_bytes=max(cache, 1),
                max_bad_videos=int(bad) if bad >= 1 else bad)  # fmt: skip


def pixel_dtype(args: argparse.Namespace) -> str:
    """``--pixels``: uint8 on CUDA for ``auto`` (models saved before the option: float32)."""
    pixels = getattr(args, "pixels", "float32")
    if pixels == "auto":
        return "uint8" if str(args.device).startswith("cuda") else "float32"
    return str(pixels)


def windowed(args: argparse.Namespace, dataset: ActivityNetDataset, *, training: bool) -> Any:
    """``dataset`` itself (anet), or its sliding windows (thumos; training: those with an action).

    Every video must hold one window: the detector's T is fixed.
    """
    if args.layout != "thumos":
        return dataset
    short = [(dataset.videos[i].video_id, dataset.num_snippets_of(i)) for i in range(len(dataset))
             if dataset.num_snippets_of(i) < args.window]  # fmt: skip
    if short:
        vid, n = short[0]
        fail(f"{len(short)} video(s) have fewer snippets than one --window {args.window} (first: "
             f"{vid!r}, {n} snippets of {args.snippet_length} frames); lower --window or "
             "--snippet-length, or use longer videos")  # fmt: skip
    return WindowedDataset(dataset, window=args.window, stride=max(1, args.window // 2),
                           drop_empty=training)  # fmt: skip


def collate(samples: list[Any]) -> dict[str, list[Any]]:
    return {
        "snippets": [s.source for s in samples],
        "segments": [s.segments for s in samples],
        "labels": [s.labels for s in samples],
        "video_ids": [s.video_id for s in samples],
        "durations": [s.duration for s in samples],
    }
