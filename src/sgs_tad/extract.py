"""Feature extraction: one ``.npy`` ``float32 [T, C]`` file per video, from a video encoder.

Runs the engine's phase 1 alone (:meth:`~sgs_tad.SequentializedGradientSampler.encode_features`:
no graph, micro-batch by micro-batch, decoding only the snippets of the current call) over every
video and writes ``<output>/<prefix><video_id>.npy``. That is the layout the main job reads with
``examples/etad_anet.py --features DIR`` (:class:`~sgs_tad.data.ActivityNetDataset` in
``mode="features"`` looks for ``v_<id>.npy`` and ``<id>.npy``), and the one ActionFormer's
ActivityNet and THUMOS data sets read (``<feat_folder>/<file_prefix><video_id><file_ext>``,
``.npy`` ``[T, C]``). See ``docs/extract.md``.

From the command line::

    python -m sgs_tad.extract --checkpoint outputs/etad_anet/model.pt \\
        --annotations data/synthetic/annotations.json --data-root data/synthetic/videos \\
        --output features/
    python -m sgs_tad.extract --encoder tsm_r50 --weights tsm_k400.pth \\
        --videos /data/videos --num-snippets 128 --snippet-length 8 --size 224 --output feats/

Extraction is resumable: ``<output>/extract_manifest.json`` (:mod:`sgs_tad.manifest`) records the
settings and each file's shape and size, so a rerun skips the files that are done, extracts
again those that are empty or truncated, and refuses a folder made with other settings unless
``--overwrite``. Files are written to an unpredictable temporary name and renamed, so a killed
run never leaves a truncated ``.npy``; a video that cannot be read is logged, counted and
skipped without stopping the others. Exit status: 0 when every video has its
file, 1 when some failed, 2 for bad arguments.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from sgs_tad.engine.sources import TensorSource
    >>> out = tempfile.mkdtemp()
    >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    >>> summary = extract_features(enc, {"a": TensorSource(torch.randn(5, 6))}, out,
    ...                            progress=False)
    >>> summary["written"], summary["failed"], np.load(f"{out}/a.npy").shape
    (1, 0, (5, 4))
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, Union

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
from sgs_tad.manifest import Manifest, extraction_settings
from sgs_tad.training.metrics import ProgressBar
from sgs_tad.training.outputs import (
    DiskFullError,
    OutputLock,
    OutputLockedError,
    atomic_write,
    remove_stale_temporaries,
    temporary_file,
)

__all__ = [
    "SnippetOptions",
    "VideoInput",
    "extract_features",
    "load_checkpoint_encoder",
    "main",
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
            :mod:`~sgs_tad.manifest` says which) and not ``overwrite``; or ``prefix`` cannot
            name a file. Both before anything is decoded.
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


# ---------------------------------------------------------------------------------- CLI


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2, as argparse does for bad options."""
    print(f"python -m sgs_tad.extract: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sgs_tad.extract",
        description="Extract one .npy [T, C] feature file per video with a video encoder.",
    )
    model = p.add_argument_group("encoder (one of --encoder or --checkpoint)")
    model.add_argument("--encoder", choices=sorted(ENCODERS), help="registry name")
    model.add_argument("--weights", type=Path, help="encoder checkpoint file for --encoder")
    model.add_argument("--checkpoint", type=Path, help="model.pt written by examples/etad_anet.py")
    data = p.add_argument_group("videos (--annotations with --data-root, or --videos)")
    data.add_argument("--annotations", type=Path, help="ActivityNet-format annotation JSON")
    data.add_argument("--data-root", type=Path, help="folder of the annotated videos")
    data.add_argument("--subset", default=None, help="only this subset of --annotations")
    data.add_argument("--videos", type=Path, help="a folder of video files (id = file stem)")
    snip = p.add_argument_group("snippets (default: the main job's, or the checkpoint's)")
    snip.add_argument("--num-snippets", type=int, help="T, snippets per video (default 32)")
    snip.add_argument("--snippet-length", type=int, help="L, frames per snippet (default 4)")
    snip.add_argument("--size", type=int, help="frame size after the centre crop (default 32)")
    snip.add_argument("--frame-stride", type=int, default=1, help="frames apart within a snippet")
    snip.add_argument(
        "--snippet-stride",
        type=int,
        help="a snippet every this many frames instead of --num-snippets (THUMOS style)",
    )
    snip.add_argument("--mean", type=float, nargs=3, default=list(MAIN_JOB_MEAN))
    snip.add_argument("--std", type=float, nargs=3, default=list(MAIN_JOB_STD))
    run = p.add_argument_group("output and run")
    run.add_argument("--output", type=Path, required=True, help="folder of the .npy files")
    run.add_argument("--prefix", default="", help="file name prefix, e.g. v_ (ActionFormer)")
    run.add_argument("--overwrite", action="store_true", help="recompute existing files")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--micro-batch-size", type=int, default=8, help="snippets per encoder call")
    run.add_argument("--no-progress", action="store_true")
    return p


def _check_args(a: argparse.Namespace) -> None:
    """Refuse inconsistent options with one line naming the value and the fix (exit 2)."""
    if a.weights is not None and a.encoder is None:
        _fail("--weights needs --encoder NAME (a model.pt from the main job goes to --checkpoint)")
    if (a.encoder is None) == (a.checkpoint is None):
        _fail(
            "give exactly one of --encoder NAME (with --weights FILE) or --checkpoint model.pt; "
            f"got --encoder {a.encoder} and --checkpoint {a.checkpoint}"
        )
    for flag in ("weights", "checkpoint"):
        value = getattr(a, flag)
        if value is not None and not value.is_file():
            _fail(f"--{flag} {value}: no such file")
    if (a.annotations is None) == (a.videos is None):
        _fail(
            "give exactly one input: --annotations FILE.json with --data-root DIR, or --videos "
            f"DIR; got --annotations {a.annotations} and --videos {a.videos}"
        )
    if a.annotations is not None:
        if not a.annotations.is_file():
            _fail(f"--annotations {a.annotations}: no such file")
        if a.data_root is None or not a.data_root.is_dir():
            _fail(
                f"--annotations needs --data-root DIR, the folder of its videos; got "
                f"--data-root {a.data_root}"
            )
    elif not a.videos.is_dir():
        _fail(f"--videos {a.videos}: not a folder; pass the folder holding the video files")
    elif a.data_root is not None or a.subset is not None:
        _fail("--data-root and --subset go with --annotations; with --videos drop them")
    for flag in ("num_snippets", "snippet_length", "size", "frame_stride", "micro_batch_size"):
        value = getattr(a, flag)
        if value is not None and value < 1:
            _fail(f"--{flag.replace('_', '-')} must be >= 1; got {value}")
    if a.snippet_stride is not None:
        if a.snippet_stride < 1:
            _fail(f"--snippet-stride must be >= 1; got {a.snippet_stride}")
        if a.num_snippets is not None:
            _fail(
                f"--snippet-stride {a.snippet_stride} and --num-snippets {a.num_snippets} "
                "exclude each other: a fixed snippet count, or a snippet every N frames"
            )
    if min(a.std) <= 0:
        _fail(f"--std must be three values > 0; got {a.std}")
    if a.output.exists() and not a.output.is_dir():
        _fail(f"--output {a.output} is a file; pass a folder (created if needed)")
    if "/" in a.prefix or os.sep in a.prefix or a.prefix in (".", ".."):
        _fail(f"--prefix {a.prefix!r} cannot start a file name (it holds a path separator); "
              "pass a plain prefix such as v_")  # fmt: skip
    _check_writable(a.output)
    try:
        device = torch.device(a.device)
    except RuntimeError:
        _fail(f"--device {a.device!r} is not a device; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {a.device} but CUDA is not available here; use --device cpu")


def _check_writable(output: Path) -> None:
    """Refuse an ``--output`` that cannot be written now, before the encoder is loaded (and
    without creating it: a run refused for another reason leaves nothing behind)."""
    folder = output
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        _fail(f"--output {output}: {folder} is a file, so the folder cannot be created; pass "
              "another folder")  # fmt: skip
    if folder == output:
        try:  # the folder exists: try what the run will do
            fd, probe = temporary_file(output / "probe")
            os.close(fd)
            probe.unlink()
        except OSError as err:
            _fail(f"--output {output} cannot be written ({err.strerror or err}); pass a "
                  "folder you can write to")  # fmt: skip
    elif not os.access(folder, os.W_OK | os.X_OK):
        _fail(f"--output {output} cannot be created: {folder} is not writable; pass a folder "
              "you can write to")  # fmt: skip


def _build(a: argparse.Namespace) -> tuple[nn.Module, SnippetOptions]:
    """The encoder and the snippet options of the command line (exit 2 on a bad file)."""
    defaults: dict[str, Any] = {"num_snippets": 32, "snippet_length": 4, "size": 32}
    try:
        if a.checkpoint is not None:
            encoder, run_args = load_checkpoint_encoder(a.checkpoint)
            defaults.update({k: run_args[k] for k in defaults if run_args.get(k) is not None})
        else:
            encoder = build_encoder(a.encoder, weights=a.weights)
    except (ValueError, TypeError, KeyError, RuntimeError, OSError, EOFError,
            pickle.UnpicklingError) as err:  # fmt: skip
        source = a.checkpoint if a.checkpoint is not None else a.weights
        detail = " ".join(str(err).split())[:400] or "the file is empty or truncated"
        _fail(f"cannot load the encoder from {source}: {type(err).__name__}: {detail}")
    stride_mode = a.snippet_stride is not None
    opts = SnippetOptions(
        num_snippets=None if stride_mode else (a.num_snippets or defaults["num_snippets"]),
        snippet_length=a.snippet_length or defaults["snippet_length"],
        size=a.size or defaults["size"],
        frame_stride=a.frame_stride,
        snippet_stride=a.snippet_stride,
        mean=tuple(a.mean),
        std=tuple(a.std),
    )
    return encoder, opts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some videos failed).

    Bad arguments exit with status 2 and a one-line message (``SystemExit``).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
    """
    a = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _check_args(a)
    encoder, opts = _build(a)
    if a.annotations is not None:
        try:
            videos = videos_from_annotations(a.annotations, a.data_root, subset=a.subset)
        except (ValueError, OSError) as err:
            _fail(f"cannot read --annotations {a.annotations}: {' '.join(str(err).split())}")
    else:
        videos = videos_in_folder(a.videos)
    if not videos:
        where = (
            f"--videos {a.videos}" if a.videos is not None else f"--annotations {a.annotations}"
        )
        _fail(
            f"{where} holds no videos (extensions {', '.join(VIDEO_EXTENSIONS)}"
            f"{'' if a.subset is None else f', subset {a.subset!r}'})"
        )
    encoder.to(a.device)
    logger.info(
        "extracting %d videos with %s into %s (T=%s, L=%d, size=%s)",
        len(videos),
        type(encoder).__name__,
        a.output,
        opts.num_snippets if opts.num_snippets is not None else f"every {opts.snippet_stride}",
        opts.snippet_length,
        opts.frame_size,
    )
    try:
        summary = extract_features(
            encoder,
            videos,
            a.output,
            snippets=opts,
            micro_batch_size=a.micro_batch_size,
            device=a.device,
            prefix=a.prefix,
            overwrite=a.overwrite,
            progress=not a.no_progress,
        )
    except DiskFullError as err:
        print(f"python -m sgs_tad.extract: error: {err.strerror}", file=sys.stderr)
        return 1
    except (ValueError, OutputLockedError, OSError) as err:  # found before any decoding
        _fail(" ".join(str(err).split()))
    print(
        f"{summary['written']} written, {summary['skipped']} skipped (already there), "
        f"{summary['failed']} failed of {summary['total']} videos; features "
        f"[T, {summary['channels'] if summary['channels'] is not None else 'C'}] in "
        f"{summary['output_dir']} ({summary['seconds']:.1f} s)"
    )
    for video_id, error in summary["failures"].items():
        print(f"failed: {video_id}: {error}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
