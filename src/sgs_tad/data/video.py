"""Reading one video from disk: a video file (PyAV), a folder of frames (Pillow) or features.

Files are found by :func:`find_media` under the names seen in the wild, ``v_<id>.<ext>`` and
``<id>.<ext>`` (a frame folder is ``v_<id>/`` or ``<id>/``). PyAV and Pillow are optional
(``pip install sgs_tad[video]``); they are imported at the point of use.

Decoding strategy (:func:`decode_video_frames`): the container is opened per call, seeks to the
key frame before the first requested frame when that frame is far from the start, then decodes
forward and keeps only the requested frames, stopping after the last one. Frame indices come from
presentation timestamps, so B-frames and seeking give the same frames as a plain sequential
decode (tested). Nothing is cached between calls: a source object stays small and picklable,
and memory holds only the frames of the current request; with a ``transform`` (crop and resize)
only their transformed versions and one chunk of full-resolution frames, whatever the
resolution.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "FEATURE_EXTENSIONS",
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "FrameTransform",
    "MediaInfo",
    "UnsafeMediaPathError",
    "decode_video_frames",
    "decoder_errors",
    "find_media",
    "list_frame_files",
    "load_features",
    "probe_media",
    "read_frame_files",
    "resolve_inside",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
FRAME_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
FEATURE_EXTENSIONS: tuple[str, ...] = (".npy",)

MediaKind = Literal["video", "frames", "features"]

# Seek only when the first wanted frame is further than this from the start: seeking costs a
# container-level jump plus decoding from the previous key frame, which for short clips is
# slower than just decoding from frame 0.
_SEEK_MIN_FRAMES = 32

# Frames missing past the end of the stream that are not worth a warning: containers
# sometimes overstate the frame count by one.
_TRUNCATION_TOLERANCE = 1

#: Bytes of full-resolution frames held before a ``transform`` call (a 1080p RGB frame is 6 MB,
#: so 16 MB is two of them, or about 70 frames of 320x240).
DEFAULT_CHUNK_BYTES = 16 * 2**20

#: Maps decoded frames ``uint8 [m, H, W, 3]`` to an array ``[m, ...]`` (crop and resize).
FrameTransform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe_media` learns about one video.

    Attributes:
        path: The file or folder.
        kind: ``"video"``, ``"frames"`` or ``"features"``.
        num_frames: Frames (video, frame folder) or feature rows (features).
        fps: Frames per second when known (video files), else ``None``.
        height: Frame height in pixels (0 for features).
        width: Frame width in pixels (0 for features).
        shape: The array's shape as stored (features only), else ``None``.
    """

    path: Path
    kind: MediaKind
    num_frames: int
    fps: float | None
    height: int
    width: int
    shape: tuple[int, int] | None = None


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        pip_name = {"av": "av", "PIL": "pillow"}.get(module, module)
        raise ImportError(
            f"reading this data needs the optional package {pip_name!r}: "
            f"pip install 'sgs_tad[video]' (or pip install {pip_name})"
        ) from err


class UnsafeMediaPathError(ValueError):
    """A video id whose file would lie outside the data root (``../``, an absolute path, a
    symbolic link that points out of the root).

    Attributes:
        video_id: The id from the annotation file.
        root: The data root.
        path: The candidate path that left the root (as resolved).
        reason: ``"outside the data root"``, the key of the data set's skip counts.
    """

    reason = "outside the data root"

    def __init__(self, video_id: str, root: Path, path: Path) -> None:
        super().__init__(
            f"video id {video_id!r} resolves to {str(path)!r}, outside the data root "
            f"{str(root)!r}; ids must name files inside the root (no '..', no absolute paths, "
            "no symbolic links that point out of it). Fix the id in the annotation file, or "
            "move or copy the file into the root (on_error='skip' drops such videos)."
        )
        self.video_id = video_id
        self.root = root
        self.path = path


def resolve_inside(root: str | Path, path: str | Path, video_id: str) -> Path:
    """Resolve ``path`` (symbolic links included) and check that it lies inside ``root``.

    Args:
        root: The data root.
        path: A candidate path built from ``video_id`` (need not exist).
        video_id: The id the path was built from, for the error message.

    Returns:
        The resolved path.

    Raises:
        UnsafeMediaPathError: when the resolved path is not inside the resolved root.
    """
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafeMediaPathError(video_id, Path(root), real)
    if real == real_root:  # an id of "" or "." names the root itself, never a video
        raise UnsafeMediaPathError(video_id, Path(root), real)
    return real


def decoder_errors() -> tuple[type[BaseException], ...]:
    """The exception types a decoder raises on a corrupt or unreadable file.

    ``OSError`` (missing or unreadable file, Pillow's ``UnidentifiedImageError``),
    ``ValueError`` (PyAV's ``InvalidDataError``, a stream that ends early), ``EOFError``
    (a truncated file), ``IndexError`` (a frame file gone from a folder) and every
    ``av.error.FFmpegError`` when PyAV is installed.
    """
    errors: list[type[BaseException]] = [OSError, ValueError, EOFError, IndexError]
    try:
        import av

        errors.append(av.error.FFmpegError)
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    return tuple(errors)


def find_media(root: str | Path, video_id: str, kind: MediaKind) -> Path | None:
    """Find the file (or frame folder) of ``video_id`` under ``root``.

    Tries ``v_<id>`` and ``<id>`` (and ``<id>`` without a leading ``v_``), with each extension
    of ``kind`` (``VIDEO_EXTENSIONS`` or ``FEATURE_EXTENSIONS``; a folder for ``"frames"``).
    Every candidate is resolved (symbolic links included) before it is looked at, and must
    lie inside ``root``: an id such as ``../x`` or ``/etc/x`` is refused, not opened.

    Returns:
        The path, or ``None`` when nothing matches.

    Raises:
        UnsafeMediaPathError: when a candidate path leaves ``root``.
    """
    root = Path(root)
    stems = [f"v_{video_id}", video_id]
    if video_id.startswith("v_"):
        stems.append(video_id[2:])
    exts = (
        ("",) if kind == "frames" else VIDEO_EXTENSIONS if kind == "video" else FEATURE_EXTENSIONS
    )
    for stem in stems:
        for ext in exts:
            candidate = root / (stem + ext)
            resolve_inside(root, candidate, video_id)
            if candidate.is_dir() if kind == "frames" else candidate.is_file():
                return candidate
    return None


def list_frame_files(folder: str | Path) -> list[Path]:
    """The image files of a frame folder, sorted by name (``img_00001.jpg`` ... )."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)


def probe_media(path: str | Path, kind: MediaKind) -> MediaInfo:
    """Count frames and read fps and frame size without decoding the whole video.

    For video files the container's frame count is used; when it is missing (some containers
    do not store it) it is estimated from duration × frame rate.
    """
    path = Path(path)
    if kind == "features":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2:
            raise ValueError(
                f"feature file {str(path)!r} has shape {arr.shape}; expected [T, C] (2-D)."
            )
        shape = (int(arr.shape[0]), int(arr.shape[1]))
        return MediaInfo(path, "features", shape[0], None, 0, 0, shape)
    if kind == "frames":
        files = list_frame_files(path)
        if not files:
            return MediaInfo(path, "frames", 0, None, 0, 0)
        image = _require("PIL.Image")
        with image.open(files[0]) as im:
            width, height = im.size
        return MediaInfo(path, "frames", len(files), None, int(height), int(width))
    av = _require("av")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        n = int(stream.frames or 0)
        if n <= 0 and fps > 0:
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = float(container.duration or 0) / 1e6
            n = round(seconds * fps)
        return MediaInfo(path, "video", n, fps or None, int(stream.height), int(stream.width))


def _chunked(
    transform: FrameTransform | None, chunk_bytes: int
) -> tuple[Callable[[int, np.ndarray], None], Callable[[], dict[int, np.ndarray]]]:
    """Collect decoded frames by index, transformed in chunks of at most ``chunk_bytes``.

    Returns ``(add, finish)``: ``add(index, frame)`` takes one full-resolution frame,
    ``finish()`` transforms what is left and returns ``{index: transformed frame}``.
    """
    got: dict[int, np.ndarray] = {}
    pending: list[tuple[int, np.ndarray]] = []
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending_bytes
        if not pending or transform is None:
            return
        out = transform(np.stack([f for _, f in pending]))
        for k, (index, _) in enumerate(pending):
            got[index] = out[k]
        # Drop the full-resolution frames now: holding them is what made memory grow with
        # the video's resolution (a 4K clip held whole took gigabytes).
        pending.clear()
        pending_bytes = 0

    def add(index: int, frame: np.ndarray) -> None:
        nonlocal pending_bytes
        if transform is None:
            got[index] = frame
            return
        if pending and pending_bytes + frame.nbytes > chunk_bytes:
            flush()
        pending.append((index, frame))
        pending_bytes += frame.nbytes

    def finish() -> dict[int, np.ndarray]:
        flush()
        return got

    return add, finish


_warned_truncated: set[str] = set()


def _fill_gaps(path: Path | str, wanted: Sequence[int], got: dict[int, np.ndarray]) -> None:
    """Serve frames that were never decoded by a neighbour; warn when the file is truncated."""
    missing = [i for i in wanted if i not in got]
    if not missing:
        return
    have = sorted(got)
    # A gap: past the end (containers sometimes overstate the frame count by one) or a
    # timestamp that rounds onto a neighbour (variable frame rate). Serve the nearest
    # earlier decoded frame, else the nearest later one.
    for i in missing:
        k = bisect.bisect_right(have, i)
        got[i] = got[have[k - 1]] if k > 0 else got[have[0]]
    beyond = [i for i in missing if i > have[-1]]
    if (
        beyond
        and beyond[-1] > have[-1] + _TRUNCATION_TOLERANCE
        and str(path) not in _warned_truncated
    ):
        _warned_truncated.add(str(path))
        logger.warning(
            "video %r is truncated: the stream ends at frame %d but frames up to %d were asked "
            "for (the container claims more); %d frame(s) past the end are served by the last "
            "decoded frame. Re-encode or re-download the file, or remove the video from the "
            "annotation file.",
            str(path),
            have[-1],
            beyond[-1],
            len(beyond),
        )
    else:
        logger.debug("%s: %d frame(s) served by a neighbour", path, len(missing))


def decode_video_frames(
    path: str | Path,
    frame_indices: Sequence[int],
    *,
    allow_seek: bool = True,
    transform: FrameTransform | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> np.ndarray:
    """Decode the frames at ``frame_indices`` of a video file.

    Args:
        path: The video file.
        frame_indices: 0-based frame indices, any order, repeats allowed.

        allow_seek: Seek to the key frame before the first wanted frame (when it is at least
            32 frames in); ``False`` always decodes from the start.
        transform: Applied to the frames as they are decoded, in chunks: ``uint8 [m, H, W, 3]``
            to an array ``[m, ...]`` (e.g. crop and resize). Only the transformed frames and
            one chunk of full-resolution frames are held at a time, so memory does not grow
            with the video's resolution. ``None`` keeps the decoded frames.
        chunk_bytes: Bytes of full-resolution frames per ``transform`` call (at least one
            frame per call).

    Returns:
        ``uint8`` array ``[len(frame_indices), H, W, 3]`` (RGB), or the transformed frames
        ``[len(frame_indices), ...]``, in the order asked. A frame that is never decoded
        (beyond the end of the stream, or skipped by the timestamps of a variable-frame-rate
        video) is served by the nearest earlier decoded frame; more than one frame missing
        past the end (a truncated file whose container still claims its full length) logs a
        warning naming the file, once per file and process. Frame indices come from
        timestamps at the stream's average rate: re-encode variable-frame-rate videos to a
        constant rate for exact indexing.
    """
    av = _require("av")
    wanted = sorted(set(int(i) for i in frame_indices))
    if not wanted:
        raise ValueError("frame_indices is empty; ask for at least one frame.")
    if wanted[0] < 0:
        raise ValueError(f"frame indices must be >= 0; got {wanted[0]}.")
    last = wanted[-1]
    add, finish = _chunked(transform, chunk_bytes)
    found = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # Single-threaded on purpose: a frame-thread pool costs more to start than decoding a
        # micro-batch of small frames. Parallel decoding comes from DataLoader workers only
        # with ActivityNetDataset(decode_in_workers=True): lazy sources decode in the process
        # (and the SGS prefetch thread) that asks for the snippets, whatever num_workers is.
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        tb = stream.time_base
        start = stream.start_time or 0
        use_pts = fps > 0 and tb is not None
        seeked = allow_seek and use_pts and wanted[0] >= _SEEK_MIN_FRAMES
        if seeked:
            target = int(start + (wanted[0] / fps) / float(tb))
            container.seek(target, stream=stream, backward=True, any_frame=False)
        wanted_set = set(wanted)
        seen: set[int] = set()
        # One converter for the whole stream: ``frame.to_ndarray(format="rgb24")`` builds a
        # new swscale context per frame, which cost 3.6x the decoding itself at 48 px (132
        # against 37 us a frame, the same bytes; docs/benchmarks.md, "The data path").
        rgb = av.video.reformatter.VideoReformatter()
        for seq, frame in enumerate(container.decode(stream)):
            if use_pts and frame.pts is not None:
                index = round(float((frame.pts - start) * tb) * fps)
            elif seeked:
                # No timestamp after a seek: the position is unknown, decode from the start.
                return decode_video_frames(
                    path,
                    frame_indices,
                    allow_seek=False,
                    transform=transform,
                    chunk_bytes=chunk_bytes,
                )
            else:
                index = seq
            if index > last:
                break
            if index in wanted_set and index not in seen:
                # Convert now and drop the decoder frame: only the requested frames stay alive.
                seen.add(index)
                add(index, rgb.reformat(frame, format="rgb24").to_ndarray())
                found += 1
                if found == len(wanted_set):
                    break
    got = finish()
    if not got:
        raise ValueError(
            f"could not decode frames {wanted[:5]} of {str(path)!r}: the stream ended "
            "before them; the video is shorter than its container says."
        )
    _fill_gaps(path, wanted, got)
    return np.stack([got[int(i)] for i in frame_indices])


def read_frame_files(
    files: Sequence[Path],
    frame_indices: Sequence[int],
    *,
    transform: FrameTransform | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> np.ndarray:
    """Read frames ``frame_indices`` of a frame folder (``files`` from :func:`list_frame_files`).

    Args:
        files: The folder's image files, in frame order.
        frame_indices: 0-based frame indices, any order, repeats allowed.
        transform: As in :func:`decode_video_frames`: applied in chunks as the images are
            read, so only the transformed frames are held.
        chunk_bytes: Bytes of full-resolution images per ``transform`` call.

    Returns:
        ``uint8`` array ``[len(frame_indices), H, W, 3]`` (RGB), or the transformed frames.
    """
    image = _require("PIL.Image")
    add, finish = _chunked(transform, chunk_bytes)
    for i in sorted(set(int(i) for i in frame_indices)):
        with image.open(files[i]) as im:
            add(i, np.asarray(im.convert("RGB")))
    got = finish()
    return np.stack([got[int(i)] for i in frame_indices])


def load_features(path: str | Path) -> np.ndarray:
    """Load a ``[T, C]`` feature array from a ``.npy`` file (as ``float32``)."""
    arr = np.load(Path(path))
    if arr.ndim != 2:
        raise ValueError(
            f"feature file {str(path)!r} has shape {arr.shape}; expected [T, C] (2-D). "
            "Transpose [C, T] arrays before saving."
        )
    return np.asarray(arr, dtype=np.float32)
