"""Feature extraction as a library: run an encoder over videos and save ``[T, C]`` files.

The command line is :mod:`sgs_tad.extract.cli`; :mod:`sgs_tad.extract` re-exports both.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import nn

from sgs_tad.data.annotations import load_annotations
from sgs_tad.data.snippets import MediaSnippetSource, draw_crop, snippet_frame_indices
from sgs_tad.data.video import VIDEO_EXTENSIONS, find_media, probe_media
from sgs_tad.encoders import ENCODERS, build_encoder
from sgs_tad.engine.norm import freeze_norm_layers
from sgs_tad.engine.sgs import SequentializedGradientSampler
from sgs_tad.engine.sources import SnippetSource
from sgs_tad.extract.manifest import Manifest, extraction_settings
from sgs_tad.training.metrics import ProgressBar
from sgs_tad.training.outputs import (
    DiskFullError,
    OutputLock,
    atomic_write,
    remove_stale_temporaries,
)

__all__ = [
    "SnippetOptions",
    "VideoInput",
    "extract_features",
    "load_checkpoint_encoder",
    "videos_from_annotations",
    "videos_in_folder",
]

logger = logging.getLogger("sgs_tad.extract")  # not "__main__" under python -m

#: A video to extract: a video file, a folder of frames, or a ready snippet source.
VideoInput = Union[str, "os.PathLike[str]", SnippetSource]

#: Normalisation of the main job (``examples/etad_anet.py``): pixels in [0, 1], then
#: ``(x - 0.5) / 0.25``.
MAIN_JOB_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
MAIN_JOB_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)
#: Seconds between rewrites of the manifest during a run (and once at its end).
MANIFEST_EVERY_S = 30.0


@dataclass(frozen=True)
class SnippetOptions:
    """How a video file becomes snippets: the main job's options, with its defaults.

    Attributes:
        num_snippets: T, snippets per video, centres uniformly spaced
            (:func:`~sgs_tad.data.snippets.snippet_frame_indices`); ``None`` takes one every
            ``snippet_stride`` frames instead (THUMOS style, T depends on the video length).
        snippet_length: L, frames per snippet.
        size: Frame size after the centre crop, ``int`` or ``(H, W)``.
        frame_stride: Frames between consecutive frames of a snippet.
        snippet_stride: Frames between snippet starts when ``num_snippets`` is ``None``
            (default: back to back).
        mean: Per-channel mean subtracted from pixels in ``[0, 1]``.
        std: Per-channel standard deviation divided by.
    """

    num_snippets: int | None = 32
    snippet_length: int = 4
    size: int | tuple[int, int] = 32
    frame_stride: int = 1
    snippet_stride: int | None = None
    mean: tuple[float, ...] = MAIN_JOB_MEAN
    std: tuple[float, ...] = MAIN_JOB_STD

    def __post_init__(self) -> None:
        for name in ("snippet_length", "frame_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        for name in ("num_snippets", "snippet_stride"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}.")
        if min(self.frame_size) < 1:
            raise ValueError(f"size must be >= 1 pixel, got {self.size!r}.")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"mean and std need 3 values (RGB), std > 0; got {self.mean!r}, {self.std!r}."
            )

    @property
    def frame_size(self) -> tuple[int, int]:
        """``size`` as ``(H, W)``."""
        if isinstance(self.size, int):
            return (self.size, self.size)
        return (int(self.size[0]), int(self.size[1]))

    def source(self, path: str | os.PathLike[str]) -> MediaSnippetSource:
        """The evaluation-time snippet source of a video file or frame folder (centre crop).

        Args:
            path: A video file (read with PyAV) or a folder of frame images (Pillow).

        Returns:
            A :class:`~sgs_tad.data.MediaSnippetSource`; decoding happens later, per call.

        Raises:
            FileNotFoundError: Nothing at ``path``.
            ValueError: The video is shorter than one snippet, or its header is unreadable.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no video file or frame folder at {str(path)!r} (annotation ids are looked up "
                "as v_<id>.<ext> and <id>.<ext> under the data root)."
            )
        kind: Literal["video", "frames"] = "frames" if path.is_dir() else "video"
        info = probe_media(path, kind)
        if info.num_frames < 1 or info.height < 1 or info.width < 1:
            raise ValueError(f"{str(path)!r} has no readable frames (probed {info}).")
        frames = snippet_frame_indices(
            info.num_frames,
            self.num_snippets,
            self.snippet_length,
            frame_stride=self.frame_stride,
            snippet_stride=self.snippet_stride,
        )
        size = self.frame_size
        return MediaSnippetSource(
            path,
            frames,
            kind=kind,
            crop=draw_crop((info.height, info.width), size, mode="center"),
            size=size,
            mean=self.mean,
            std=self.std,
        )


# ------------------------------------------------------------------------------- inputs


def videos_from_annotations(
    annotations: str | os.PathLike[str], root: str | os.PathLike[str], *, subset: str | None = None
) -> dict[str, Path]:
    """The videos of an ActivityNet-format annotation file, by id.

    Args:
        annotations: The annotation JSON.
        root: The folder of the videos (``v_<id>.<ext>`` or ``<id>.<ext>``, or frame folders
            ``v_<id>/`` / ``<id>/``), as for :class:`~sgs_tad.data.ActivityNetDataset`.
        subset: Keep this subset only (``"training"``, ``"validation"``, …); ``None``: all.

    Returns:
        ``{video_id: path}``; a video with no file maps to ``root / video_id``, which does
        not exist, so that :func:`extract_features` reports it as failed with the others.
    """
    root = Path(root)
    ann = load_annotations(Path(annotations), subset=subset, on_error="skip")
    found: dict[str, Path] = {}
    for video in ann.videos:
        path = find_media(root, video.video_id, "video") or find_media(
            root, video.video_id, "frames"
        )
        found[video.video_id] = path if path is not None else root / video.video_id
    return found


def videos_in_folder(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The video files of a folder (extensions of ``VIDEO_EXTENSIONS``), by file stem.

    Args:
        folder: A folder of video files; sub-folders are ignored.

    Returns:
        ``{stem: path}`` sorted by name; the stem (``v_abc`` for ``v_abc.mp4``) is the id.
    """
    folder = Path(folder)
    videos: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            if path.stem in videos:
                logger.warning(
                    "%s: %s has the same id; keeping the first", videos[path.stem], path
                )
                continue
            videos[path.stem] = path
    return videos


# ------------------------------------------------------------------------------ writing


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically (an unpredictable temporary name, fsync,
    ``os.replace``): a planted link is never followed, a killed run leaves no partial file."""
    atomic_write(path, lambda f: np.save(f, array))


def _check_id(video_id: str) -> None:
    if not video_id or "/" in video_id or os.sep in video_id or video_id in (".", ".."):
        raise ValueError(
            f"video id {video_id!r} cannot name a file; ids must be non-empty and contain no "
            "path separator."
        )


def _is_device_failure(err: BaseException) -> bool:
    """CUDA out of memory, or a CUDA/cuDNN/cuBLAS error (sticky: the context is unusable)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        mark in text
        for mark in ("CUDA error", "device-side assert", "CUBLAS_STATUS", "CUDNN_STATUS")
    )


def extract_features(
    encoder: nn.Module,
    videos: Mapping[str, VideoInput],
    output_dir: str | os.PathLike[str],
    *,
    snippets: SnippetOptions | None = None,
    micro_batch_size: int = 8,
    device: torch.device | str | None = None,
    pool: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prefix: str = "",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every video and write ``<output_dir>/<prefix><video_id>.npy`` (``float32 [T, C]``).

    The encoder is put in eval mode for the extraction (BatchNorm uses its running statistics,
    dropout is off) and its previous mode is restored afterwards. Each video goes through the
    engine's phase 1 alone (``encode_features``), ``micro_batch_size`` snippets per encoder
    call. A video whose file is missing, unreadable or corrupt is logged with its file name,
    counted and skipped; the others go on. CUDA out-of-memory and CUDA errors are raised:
    they are no fault of one video, and every later video would fail with them.

    Args:
        encoder: Maps snippets ``[M, *S]`` to ``[M, C]`` (or to what ``pool`` turns into it);
            it should already be on ``device``.
        videos: ``{video_id: input}``, the input a video file, a frame folder or a
            :class:`~sgs_tad.engine.sources.SnippetSource` (see :func:`videos_from_annotations` and
            :func:`videos_in_folder`).
        output_dir: Where the files go (created if needed).
        snippets: How files become snippets (ignored for snippet sources). Default: the main
            job's options, :class:`SnippetOptions` ``()``.
        micro_batch_size: Snippets per encoder call.
        device: Where snippets are sent. Default: the device of the encoder's parameters.
        pool: Optional callable applied to the encoder output, as in the engine.
        prefix: Prepended to the video id in the file name (``"v_"`` for ActionFormer's
            ActivityNet configuration).
        overwrite: Recompute every file, and accept a folder made with other settings
            (default: skip the files that are done, which makes a rerun resume).
        progress: Show a progress bar (tqdm, when installed).

    Returns:
        A summary: ``total``, ``written``, ``skipped`` (files already there), ``failed``
        (counts), ``failures`` (``{video_id: "file: error"}``), ``channels`` (C, or ``None``
        when nothing was written), ``output_dir`` and ``seconds``.

    Raises:
        ValueError: ``output_dir`` holds features made with other settings (its
            :mod:`~sgs_tad.extract.manifest` says which) and not ``overwrite``; or ``prefix``
            cannot name a file. Both before anything is decoded.
        OSError: ``output_dir`` cannot be written (found before anything is decoded);
            :class:`~sgs_tad.training.outputs.DiskFullError` when the disk fills up.
        OutputLockedError: another extraction writes into ``output_dir``.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
    if not isinstance(videos, Mapping):
        raise TypeError(
            f"videos must be a mapping {{video_id: file, folder or SnippetSource}}, got "
            f"{type(videos).__name__}; build one with videos_in_folder(...) or "
            "videos_from_annotations(...)."
        )
    opts = snippets if snippets is not None else SnippetOptions()
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"output_dir {str(out)!r} is a file; pass a folder (it is created if needed)."
        )
    _check_id(f"{prefix}x")  # a prefix that cannot name a file fails once, not per video
    with OutputLock(out, what="output folder"):
        # Under the lock no other extraction writes here: temporaries are a killed run's.
        remove_stale_temporaries(out)
        manifest = Manifest(out, extraction_settings(encoder, opts, prefix=prefix, pool=pool))
        sources_only = any(isinstance(v, SnippetSource) for v in videos.values())
        manifest.open(overwrite=overwrite,
                      expected_length=None if sources_only else opts.num_snippets)  # fmt: skip
        manifest.write()  # before any decoding: an unwritable folder fails now
        return _extract_all(encoder, videos, out, manifest, opts,
                            micro_batch_size=micro_batch_size, device=device, pool=pool,
                            prefix=prefix, overwrite=overwrite, progress=progress)  # fmt: skip


def _extract_all(
    encoder: nn.Module,
    videos: Mapping[str, VideoInput],
    out: Path,
    manifest: Manifest,
    opts: SnippetOptions,
    *,
    micro_batch_size: int,
    device: torch.device | str | None,
    pool: Callable[[torch.Tensor], torch.Tensor] | None,
    prefix: str,
    overwrite: bool,
    progress: bool,
) -> dict[str, Any]:
    was_training = encoder.training
    encoder.eval()
    engine = SequentializedGradientSampler(
        encoder,
        micro_batch_size=micro_batch_size,
        ratio=0.0,
        pool=pool,
        determinism_check=False,
        device=device,
    )
    t0 = last_write = time.perf_counter()
    written = skipped = 0
    channels: int | None = None
    failures: dict[str, str] = {}
    bar = ProgressBar(len(videos), desc="extract", enabled=progress)
    try:
        for video_id, item in videos.items():
            target = out / f"{prefix}{video_id}.npy"
            if not overwrite and manifest.done(target):
                skipped += 1
                bar.update(1, written=written, skipped=skipped, failed=len(failures))
                continue
            where = str(item) if isinstance(item, (str, os.PathLike)) else repr(item)
            try:
                _check_id(f"{prefix}{video_id}")
                source = item if isinstance(item, SnippetSource) else opts.source(item)
                feats = engine.encode_features([source])[0, : len(source)]
                array = feats.detach().float().cpu().numpy()
                _save_atomic(target, array)
            except DiskFullError:
                raise  # every next video would fail the same way
            except Exception as err:  # a bad video must not stop the others
                if _is_device_failure(err):
                    # Not the video's fault: after an OOM or a sticky CUDA error (device-side
                    # assert) every later video would "fail" too. Stop with the real error.
                    raise
                failures[video_id] = f"{where}: {type(err).__name__}: {err}"
                logger.error(
                    "video %r (%s) failed: %s: %s", video_id, where, type(err).__name__, err
                )
            else:
                written += 1
                channels = int(array.shape[1])
                manifest.record(target)
                if time.perf_counter() - last_write > MANIFEST_EVERY_S:
                    manifest.write()
                    last_write = time.perf_counter()
            bar.update(1, written=written, skipped=skipped, failed=len(failures))
    finally:
        bar.close()
        encoder.train(was_training)
        manifest.write()
    return {
        "total": len(videos),
        "written": written,
        "skipped": skipped,
        "failed": len(failures),
        "failures": failures,
        "channels": channels,
        "output_dir": str(out),
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------- main-job models


def load_checkpoint_encoder(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a ``model.pt`` written by the main job, and the run's arguments.

    The file is read with ``torch.load(..., weights_only=True)``. The encoder is rebuilt from
    the registry by the name the run used, its normalisation layers frozen (the main job
    freezes them for the pretrained encoders; frozen and eval-mode BatchNorm compute the same),
    and its weights loaded strictly.

    Args:
        path: ``<output-dir>/model.pt`` of ``examples/etad_anet.py``.

    Returns:
        ``(encoder, args)``: the encoder on the CPU in eval mode, and the run's arguments
        (``num_snippets``, ``snippet_length``, ``size``, …).

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is not a main-job ``model.pt``, or was trained on features and
            holds no video encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}; pass the model.pt the main job wrote "
            "(outputs/etad_anet/model.pt by default)."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not {"encoder", "args"} <= set(state):
        keys = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not a model.pt of examples/etad_anet.py (expected the entries "
            f"'encoder' and 'args', found {keys}). For an encoder checkpoint use --encoder NAME "
            "--weights FILE instead."
        )
    args = dict(state["args"])
    if state.get("in_channels") is not None:
        raise ValueError(
            f"{str(path)!r} was trained on pre-extracted features (--features), so it holds no "
            "video encoder to extract with. Use a model.pt trained on videos, or --encoder "
            "NAME --weights FILE."
        )
    name = args.get("encoder")
    if name not in ENCODERS:
        raise ValueError(
            f"{str(path)!r} names the encoder {name!r}, which is not in the registry "
            f"{sorted(ENCODERS)}."
        )
    encoder = freeze_norm_layers(build_encoder(name))
    weights = {k: v for k, v in state["encoder"].items() if not k.endswith("num_batches_tracked")}
    encoder.load_state_dict(weights)
    return encoder.eval(), args
