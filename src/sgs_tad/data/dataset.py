"""The ActivityNet-format data set: one item per video, with a lazy snippet source.

Example:
    >>> import tempfile, torch
    >>> from sgs_tad.data import ActivityNetDataset, generate_synthetic_dataset
    >>> ann = generate_synthetic_dataset(tempfile.mkdtemp(), num_videos=2, min_duration=2.0,
    ...                                  max_duration=2.0, size=32, val_fraction=0.0)
    >>> ds = ActivityNetDataset(ann, ann.parent / "videos", subset="training",
    ...                         num_snippets=16, snippet_length=4, size=24, training=True)
    >>> sample = ds[0]
    >>> sample.source.get_snippets(torch.tensor([0, 5])).shape
    torch.Size([2, 3, 4, 24, 24])
    >>> sample.segments.shape[1], sample.video_id
    (2, 'synth_0000')
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sgs_tad.data.annotations import AnnotationSet, VideoAnnotation, load_annotations
from sgs_tad.data.checks import bad_video_limit, check_feature_layout, warn_duration_mismatch
from sgs_tad.data.snippets import (
    DEFAULT_DECODE_CACHE_BYTES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecodedSource,
    MediaSnippetSource,
    SliceSource,
    check_normalisation,
    draw_crop,
    snippet_frame_indices,
)
from sgs_tad.data.video import MediaInfo, find_media, load_features, probe_media
from sgs_tad.engine.sources import (
    NonFiniteSnippetsError,
    SnippetReadError,
    SnippetSource,
    TensorSource,
)

__all__ = [
    "ActivityNetDataset",
    "VideoBatch",
    "VideoSample",
    "check_finite_features",
    "collate_samples",
]

logger = logging.getLogger(__name__)

#: A CPU tensor of at most this many bytes in a :class:`VideoSample` or :class:`VideoBatch`
#: travels from a DataLoader worker inside the item's pickle, as a numpy array. torch's own
#: reducer gives every tensor a shared-memory segment of its own (created, passed as a file
#: descriptor, mapped and unmapped), which for the 5-6 small tensors of an item cost more than
#: they carry: 165-176 against 156-175 videos/s at 2 workers (``benchmarks/data_path.py``).
#: Larger tensors (decoded pixels) still go through shared memory.
INLINE_TENSOR_BYTES = 64 * 1024


def _pack(value: object) -> tuple[bool, object]:
    """``(True, numpy array)`` for a small CPU tensor numpy can hold, else ``(False, value)``."""
    if (
        type(value) is torch.Tensor  # (not a subclass: it would come back a plain tensor)
        and value.device.type == "cpu"
        and value.layout == torch.strided
        and not value.requires_grad
        and value.dtype not in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
        and not value.is_complex()
        and value.numel() * value.element_size() <= INLINE_TENSOR_BYTES
    ):
        return True, value.numpy()
    return False, value


def _rebuild(cls: type, fields: list[tuple[str, bool, object]]) -> object:
    """Inverse of the dataclasses' ``__reduce__``: numpy arrays back to tensors."""
    values = {k: torch.from_numpy(v) if packed else v for k, packed, v in fields}
    return cls(**values)


class _InlineSmallTensors:
    """Pickles a dataclass with its small tensors inline (see :data:`INLINE_TENSOR_BYTES`)."""

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        fields = []
        for name in self.__dataclass_fields__:  # type: ignore[attr-defined]
            packed, value = _pack(getattr(self, name))
            fields.append((name, packed, value))
        return _rebuild, (type(self), fields)


@dataclass(frozen=True)
class VideoSample(_InlineSmallTensors):
    """One video (or one window of it, see :mod:`sgs_tad.data.windows`).

    Attributes:
        source: The snippets, ``N`` of them: ``get_snippets(idx)`` gives ``[n, 3, L, H, W]``
            (video, frames) or ``[n, C]`` (features).
        segments: Ground truth ``float32 [G, 2]``, start and end as fractions of ``duration``
            (``[0, 1]``; clipped to it).
        labels: Class ids ``int64 [G]``.
        video_id: The id in the annotation file.
        duration: Seconds covered by the sample (the video, or the window).
        fps: Frame rate of the video (features: ``num_frames / duration``).
        snippet_times: Centre of each snippet in seconds from ``offset``, ``float32 [N]``.
        offset: Start of the sample in the video, seconds (0 except for windows).
        features: ``[N, C]`` in features mode, else ``None``.
    """

    source: SnippetSource
    segments: torch.Tensor
    labels: torch.Tensor
    video_id: str
    duration: float
    fps: float
    snippet_times: torch.Tensor
    offset: float = 0.0
    features: torch.Tensor | None = None


@dataclass(frozen=True)
class VideoBatch(_InlineSmallTensors):
    """What :func:`collate_samples` makes of a list of samples (videos stay a list)."""

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # A batch made by collate_samples is pickled as its samples and rebuilt by it: the
        # lists keep sharing the samples' tensors, and none travels twice.
        s = self.samples
        if (
            len(s) == len(self.sources) == len(self.segments) == len(self.labels)
            and all(a.source is b for a, b in zip(s, self.sources))
            and all(a.segments is b for a, b in zip(s, self.segments))
            and all(a.labels is b for a, b in zip(s, self.labels))
            and [a.video_id for a in s] == self.video_ids
            and torch.equal(
                self.durations, torch.tensor([a.duration for a in s], dtype=torch.float64)
            )
            and torch.equal(self.offsets, torch.tensor([a.offset for a in s], dtype=torch.float64))
        ):
            return collate_samples, (list(s),)
        return super().__reduce__()

    sources: list[SnippetSource]
    segments: list[torch.Tensor]
    labels: list[torch.Tensor]
    video_ids: list[str]
    durations: torch.Tensor
    offsets: torch.Tensor
    samples: list[VideoSample]


def collate_samples(samples: Sequence[VideoSample]) -> VideoBatch:
    """``collate_fn`` for a ``DataLoader`` over :class:`ActivityNetDataset`."""
    samples = list(samples)
    return VideoBatch(
        sources=[s.source for s in samples],
        segments=[s.segments for s in samples],
        labels=[s.labels for s in samples],
        video_ids=[s.video_id for s in samples],
        durations=torch.tensor([s.duration for s in samples], dtype=torch.float64),
        offsets=torch.tensor([s.offset for s in samples], dtype=torch.float64),
        samples=samples,
    )


def check_finite_features(feats: torch.Tensor, video_id: str, path: str | Path) -> None:
    """Refuse a feature array with NaN or inf, naming the video, the file and the first one.

    Non-finite inputs otherwise surface steps later as a NaN loss or a NaN in a norm layer,
    far from the cause.

    Raises:
        NonFiniteSnippetsError: when ``feats`` has a non-finite value.
    """
    bad = ~torch.isfinite(feats)
    if not bool(bad.any()):
        return
    first = tuple(int(i) for i in bad.nonzero()[0].tolist())
    raise NonFiniteSnippetsError(
        f"the features of video {video_id!r} ({str(path)!r}) hold {int(bad.sum())} non-finite "
        f"value(s) of {feats.numel()} (first: {float(feats[first])} at row, column {first}); "
        "training on them gives a NaN loss. Re-extract this video's features, or remove it "
        "from the annotation file.",
        video_id=video_id,
        path=path,
    )


class ActivityNetDataset(Dataset):
    """Videos of an ActivityNet-format annotation file, each as a lazy snippet source.

    Every video is found and probed when the data set is built (file present, frame count,
    long enough for one snippet), so problems surface at once and ``len()`` is final.

    Args:
        annotations: An annotation JSON path, or an :class:`AnnotationSet`.
        root: Folder holding ``v_<id>.<ext>`` / ``<id>.<ext>`` files (or folders for frames).
        subset: With a path: keep this subset (``"training"``, ``"validation"``, aliases
            ``"train"``, ``"val"``); ``None`` keeps all.
        mode: ``"video"`` (PyAV), ``"frames"`` (a folder of images per video, Pillow) or
            ``"features"`` (``.npy`` ``[T, C]``; resampled linearly to ``num_snippets``).
        num_snippets: T, the number of snippets per video; ``None`` takes a snippet every
            ``snippet_stride`` frames instead (variable N, THUMOS style; features are then
            used at their native length).
        snippet_length: L, frames per snippet.
        frame_stride: Frames between consecutive frames of a snippet.
        snippet_stride: Frames between snippet starts when ``num_snippets=None``.
        size: Output frame size, ``int`` or ``(H, W)``.
        training: Random crop (drawn once per video and epoch) if true, centre crop if false.
        crop_scale: ``(min, max)`` side fraction of the crop box (see :func:`draw_crop`); the
            centre crop uses ``max``.
        mean: Per-channel normalisation mean (pixels in ``[0, 1]``).
        std: Per-channel normalisation standard deviation.
        decode_cache_bytes: ``cache_bytes`` of each video's
            :class:`~sgs_tad.data.snippets.MediaSnippetSource`: a video whose snippets fit is
            decoded once per batch and served from memory afterwards (phase 3 included).
        seed: Seed of the crop draws; the crop of video ``i`` in epoch ``e`` comes from a
            ``torch.Generator`` seeded with ``(seed, e, i)``, the same in any DataLoader worker.
        classes: Class list (default: sorted labels of the whole file).
        dtype: What the video sources deliver: ``"float32"`` (normalised with ``mean`` and
            ``std``) or ``"uint8"`` (pixels after crop and resize, a quarter of the bytes; the
            encoder normalises them on its device: set the same ``mean``/``std`` there, see
            :meth:`~sgs_tad.encoders.VideoEncoder.set_input_normalisation`).
        pin_memory: Sources return pinned memory when CUDA is available (for asynchronous
            copies to the GPU; pinned in the engine's prefetch thread).
        decode_in_workers: Decode each video's snippets in ``__getitem__``, that is in the
            DataLoader worker, once, as ``uint8``; the item's source is then a
            :class:`~sgs_tad.data.snippets.DecodedSource` whose tensor reaches the main process
            in shared memory. Without it (the default) items hold lazy sources and decoding
            happens in the main process whatever ``num_workers`` is. Memory: each worker holds
            up to ``prefetch_factor · batch_size`` decoded videos.
        worker_decode_bytes: With ``decode_in_workers``, the largest video decoded in a worker
            (its ``uint8`` snippets, ``N · 3 · L · H · W`` bytes); a larger one keeps a lazy
            source (decoded in the main process as without the option), with one log line
            naming it.
        max_bad_videos: How many distinct videos may fail to decode during a run (each such
            failure skips a batch under the trainer's ``on_bad_video="skip"``) before
            :class:`~sgs_tad.data.failures.TooManyBadVideosError` stops it, naming the files:
            an ``int``, or a ``float`` in ``[0, 1]``, a fraction of the videos (rounded up).
            ``None``: no limit. The default, 10 %, lets a few corrupt files pass and stops a
            run whose data disappeared after a few batches.
        feature_dim: C of ``.npy`` features, when known: a file ``[C, T]`` (saved transposed)
            is then refused with a message that names it. Without it the layout is checked
            across files (C is the dimension every file shares).
        on_error: ``"raise"``: a missing file, a video shorter than one snippet, an unknown
            label or an id whose file would lie outside ``root`` (``../x``, an absolute path,
            a symbolic link out of the root: :class:`~sgs_tad.data.video.UnsafeMediaPathError`)
            raises ``ValueError``/``FileNotFoundError``. ``"skip"``: such videos are dropped
            and one warning counts them by reason (also in ``self.skipped``).

    Raises:
        NonFiniteSnippetsError: from ``__getitem__`` in features mode, when a feature file
            holds NaN or inf (named with the video id and the file).

    Checked when the data set is built, with a warning naming the video: an annotation duration
    that disagrees with the video's length (frames / fps) by more than 5 % and 1 s (the
    segments are fractions of the annotated duration, so they would land in the wrong place).
    """

    def __init__(
        self,
        annotations: str | Path | AnnotationSet,
        root: str | Path,
        *,
        subset: str | None = None,
        mode: Literal["video", "frames", "features"] = "video",
        num_snippets: int | None = 128,
        snippet_length: int = 8,
        frame_stride: int = 1,
        snippet_stride: int | None = None,
        size: int | tuple[int, int] = 112,
        training: bool = False,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        decode_cache_bytes: int = DEFAULT_DECODE_CACHE_BYTES,
        dtype: Literal["float32", "uint8"] = "float32",
        pin_memory: bool = False,
        decode_in_workers: bool = False,
        worker_decode_bytes: int = DEFAULT_DECODE_CACHE_BYTES,
        max_bad_videos: int | float | None = 0.1,
        feature_dim: int | None = None,
        seed: int = 0,
        classes: Sequence[str] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> None:
        if mode not in ("video", "frames", "features"):
            raise ValueError(f"mode must be 'video', 'frames' or 'features'; got {mode!r}.")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}.")
        if isinstance(annotations, AnnotationSet):
            if subset is not None or classes is not None:
                raise ValueError(
                    "subset= and classes= apply when reading a file; with an AnnotationSet, "
                    "pass them to load_annotations instead."
                )
            ann = annotations
        else:
            ann = load_annotations(annotations, subset=subset, classes=classes, on_error=on_error)
        self.classes = ann.classes
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {str(self.root)!r} is not a folder.")
        self.mode = mode
        self.num_snippets = num_snippets
        self.snippet_length = int(snippet_length)
        self.frame_stride = int(frame_stride)
        self.snippet_stride = snippet_stride
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.training = bool(training)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        check_normalisation(mean, std)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if (
            isinstance(decode_cache_bytes, bool)
            or not isinstance(decode_cache_bytes, int)
            or (decode_cache_bytes < 0)
        ):
            raise ValueError(
                "decode_cache_bytes must be an int >= 0 (0: no cache); got "
                f"{decode_cache_bytes!r}."
            )
        self.decode_cache_bytes = decode_cache_bytes
        if dtype not in ("float32", "uint8"):
            raise ValueError(
                f"dtype must be 'float32' (normalised snippets) or 'uint8' (pixels the encoder "
                f"normalises on its device); got {dtype!r}."
            )
        self.dtype: Literal["float32", "uint8"] = dtype
        self.pin_memory = bool(pin_memory)
        self.decode_in_workers = bool(decode_in_workers)
        if (
            isinstance(worker_decode_bytes, bool)
            or not isinstance(worker_decode_bytes, int)
            or worker_decode_bytes < 0
        ):
            raise ValueError(
                f"worker_decode_bytes must be an int >= 0; got {worker_decode_bytes!r}."
            )
        self.worker_decode_bytes = worker_decode_bytes
        if feature_dim is not None and (
            isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1
        ):
            raise ValueError(f"feature_dim must be None or an int >= 1; got {feature_dim!r}.")
        self.feature_dim = feature_dim
        self.seed = int(seed)
        self.epoch = 0

        skipped: Counter[str] = Counter({"bad annotation": ann.skipped} if ann.skipped else {})
        self.videos: tuple[VideoAnnotation, ...] = ()
        self.media: tuple[MediaInfo, ...] = ()
        kept: list[tuple[VideoAnnotation, MediaInfo]] = []
        first_problem = ""
        for video in ann.videos:
            try:
                kept.append((video, self._probe(video)))
            except (OSError, ValueError) as err:  # PyAV's errors derive from these
                if on_error == "raise":
                    raise
                skipped[getattr(err, "reason", "unreadable")] += 1
                first_problem = first_problem or str(err)
        if sum(skipped.values()):
            logger.warning(
                "skipped %d of %d videos (%s); first: %s",
                sum(skipped.values()),
                len(ann.videos) + ann.skipped,
                ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())),
                first_problem,
            )
        if mode == "features":
            kept = check_feature_layout(kept, self.feature_dim, skipped, on_error)
        else:
            warn_duration_mismatch(kept)
        self.skipped: dict[str, int] = dict(skipped)
        self.videos = tuple(v for v, _ in kept)
        self.media = tuple(m for _, m in kept)
        self.bad_videos = bad_video_limit(max_bad_videos, len(self.videos))
        self._too_large_logged: set[str] = set()

    def _probe(self, video: VideoAnnotation) -> MediaInfo:
        path = find_media(self.root, video.video_id, self.mode)
        if path is None:
            err = FileNotFoundError(
                f"no {self.mode} for video {video.video_id!r} under {str(self.root)!r}: looked "
                f"for v_{video.video_id}.* and {video.video_id}.*"
                + ("/ folders" if self.mode == "frames" else "")
                + "; fix the root or pass on_error='skip'."
            )
            err.reason = "missing file"  # type: ignore[attr-defined]
            raise err
        info = probe_media(path, self.mode)
        if self.mode != "features":
            span = (self.snippet_length - 1) * self.frame_stride + 1
            if info.num_frames < span:
                err2 = ValueError(
                    f"video {video.video_id!r} ({str(path)!r}) has {info.num_frames} frames, "
                    f"shorter than one snippet ({span} frames); lower snippet_length or pass "
                    "on_error='skip'."
                )
                err2.reason = "shorter than one snippet"  # type: ignore[attr-defined]
                raise err2
        elif info.num_frames < 1:
            raise ValueError(f"feature file {str(path)!r} has no rows.")
        return info

    def decoded(
        self, source: MediaSnippetSource, start: int = 0, stop: int | None = None
    ) -> SnippetSource:
        """Snippets ``start:stop`` of ``source`` decoded now, as uint8, within the budget.

        What ``decode_in_workers=True`` does in ``__getitem__`` (and
        :class:`~sgs_tad.data.WindowedDataset` per window): a
        :class:`~sgs_tad.data.snippets.DecodedSource` when the snippets' ``uint8`` bytes fit
        ``worker_decode_bytes``; else, or when decoding fails, the lazy source (over
        ``start:stop``).
        """
        stop = len(source) if stop is None else stop
        lazy: SnippetSource = (
            source if (start, stop) == (0, len(source)) else SliceSource(source, start, stop)
        )
        name = source.video_id or str(source.path)
        nbytes = source.whole_video_bytes * (stop - start) // max(1, len(source))
        if nbytes > self.worker_decode_bytes:
            if name not in self._too_large_logged:
                self._too_large_logged.add(name)
                logger.info(
                    "video %r: its uint8 snippets take %.1f MB, over worker_decode_bytes "
                    "(%.1f MB); it is decoded lazily in the main process instead.",
                    name,
                    nbytes / 2**20,
                    self.worker_decode_bytes / 2**20,
                )
            return lazy
        try:
            pixels = source.decode_uint8(torch.arange(start, stop), count_failure=False)
        except SnippetReadError as err:
            # Keep the lazy source: it fails again where it is encoded, where the trainer's
            # on_bad_video policy skips and counts it (an error raised here would end the
            # DataLoader's epoch instead).
            logger.debug("worker decoding of %r failed (%s); left to the lazy source", name, err)
            return lazy
        return DecodedSource(
            pixels,
            dtype=self.dtype,
            mean=self.mean,
            std=self.std,
            pin_memory=self.pin_memory,
            video_id=source.video_id,
            path=source.path,
        )

    def set_epoch(self, epoch: int) -> None:
        """Change the crop draws of the next items (call once per epoch, as with samplers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def num_snippets_of(self, index: int) -> int:
        """Number of snippets N of video ``index`` (without building the item)."""
        if self.num_snippets is not None:
            return self.num_snippets
        info = self.media[index]
        if self.mode == "features":
            return info.num_frames
        return int(
            snippet_frame_indices(
                info.num_frames,
                None,
                self.snippet_length,
                frame_stride=self.frame_stride,
                snippet_stride=self.snippet_stride,
            ).shape[0]
        )

    def __getitem__(self, index: int) -> VideoSample:
        return self.sample(index)

    def sample(self, index: int, *, decode: bool | None = None) -> VideoSample:
        """Item ``index``; ``decode=False`` keeps the lazy source even with
        ``decode_in_workers`` (``None``: as the data set is configured)."""
        decode = self.decode_in_workers if decode is None else decode
        video, info = self.videos[index], self.media[index]
        duration = video.duration
        fps = info.fps or video.fps or info.num_frames / duration
        # Copies, never views of the annotation: callers may edit these tensors freely.
        segments = torch.tensor(video.segments, dtype=torch.float32).reshape(-1, 2)
        segments = (segments / duration).clamp_(0.0, 1.0)
        labels = torch.tensor(video.label_ids, dtype=torch.long)

        if self.mode == "features":
            feats = torch.from_numpy(load_features(info.path))
            check_finite_features(feats, video.video_id, info.path)
            if self.num_snippets is not None and feats.shape[0] != self.num_snippets:
                feats = (
                    F.interpolate(
                        feats.t()[None], size=self.num_snippets, mode="linear", align_corners=False
                    )[0]
                    .t()
                    .contiguous()
                )
            n = feats.shape[0]
            times = (torch.arange(n, dtype=torch.float32) + 0.5) * (duration / n)
            return VideoSample(
                TensorSource(feats),
                segments,
                labels,
                video.video_id,
                duration,
                float(fps),
                times,
                features=feats,
            )

        frame_idx = snippet_frame_indices(
            info.num_frames,
            self.num_snippets,
            self.snippet_length,
            frame_stride=self.frame_stride,
            snippet_stride=self.snippet_stride,
        )
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 1_000_003 + index
        )
        crop = draw_crop(
            (info.height, info.width),
            self.size,
            mode="random" if self.training else "center",
            scale=self.crop_scale,
            generator=generator,
        )
        source = MediaSnippetSource(
            info.path,
            frame_idx,
            kind="video" if self.mode == "video" else "frames",
            crop=crop,
            size=self.size,
            mean=self.mean,
            std=self.std,
            video_id=video.video_id,
            cache_bytes=self.decode_cache_bytes,
            dtype=self.dtype,
            pin_memory=self.pin_memory,
            bad_videos=self.bad_videos,
        )
        times = (frame_idx.float().mean(dim=1) + 0.5) / float(fps)
        final: SnippetSource = self.decoded(source) if decode else source
        return VideoSample(final, segments, labels, video.video_id, duration, float(fps), times)
