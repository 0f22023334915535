"""Lazy snippet sources over video files and frame folders, with the spatial pipeline.

A video of F frames becomes N snippets of L frames (:func:`snippet_frame_indices`); the source
decodes only the frames of the snippets it is asked for. Its spatial pipeline is fixed when it
is built: crop box (random for training, drawn once from an explicit ``torch.Generator``;
centred for testing), resize to ``size`` with ``torch.nn.functional.interpolate``, then
per-channel normalisation. Hence identical indices always give identical values, which the
SGS engine needs (phase 3 re-decodes what phase 1 decoded).

Example:
    >>> snippet_frame_indices(20, 4, 3).tolist()
    [[1, 2, 3], [6, 7, 8], [11, 12, 13], [16, 17, 18]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sgs_tad.data.failures import BadVideoLimit
from sgs_tad.data.video import (
    decode_video_frames,
    decoder_errors,
    list_frame_files,
    read_frame_files,
)
from sgs_tad.engine.pixels import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_normalisation,
    normalise_pixels,
    pin_if_cuda,
)
from sgs_tad.engine.sources import SnippetReadError, SnippetSource

__all__ = [
    "DEFAULT_DECODE_CACHE_BYTES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropBox",
    "DecodedSource",
    "MediaSnippetSource",
    "SliceSource",
    "check_normalisation",
    "draw_crop",
    "snippet_frame_indices",
]


def snippet_frame_indices(
    num_frames: int,
    num_snippets: int | None,
    snippet_length: int,
    *,
    frame_stride: int = 1,
    snippet_stride: int | None = None,
) -> torch.Tensor:
    """Frame indices of each snippet, ``LongTensor [N, L]``.

    Two regimes:

    * ``num_snippets=T`` (ActivityNet): T snippets whose centres are uniformly spaced,
      snippet i centred at frame ``(i + 0.5) * F / T``; they overlap when ``T * L > F``.
    * ``num_snippets=None`` (THUMOS): a snippet every ``snippet_stride`` frames (default
      ``snippet_length * frame_stride``, i.e. back to back), as many as fit.

    Within a snippet, frames are ``frame_stride`` apart.

    Raises:
        ValueError: when the video is shorter than one snippet
            (``F < (L - 1) * frame_stride + 1``).
    """
    if snippet_length < 1 or frame_stride < 1:
        raise ValueError(
            f"snippet_length and frame_stride must be >= 1; got {snippet_length}, {frame_stride}."
        )
    span = (snippet_length - 1) * frame_stride + 1
    if num_frames < span:
        raise ValueError(
            f"the video has {num_frames} frames, shorter than one snippet of {snippet_length} "
            f"frames {frame_stride} apart ({span} frames); lower snippet_length/frame_stride "
            "or drop the video (on_error='skip')."
        )
    offsets = torch.arange(snippet_length) * frame_stride
    if num_snippets is None:
        step = snippet_stride if snippet_stride is not None else span
        if step < 1:
            raise ValueError(f"snippet_stride must be >= 1; got {step}.")
        starts = torch.arange(0, num_frames - span + 1, step)
    else:
        if num_snippets < 1:
            raise ValueError(f"num_snippets must be >= 1 or None; got {num_snippets}.")
        centres = (
            (torch.arange(num_snippets, dtype=torch.float64) + 0.5) * num_frames / num_snippets
        )
        starts = torch.round(centres - span / 2).long().clamp(0, num_frames - span)
    return starts[:, None] + offsets[None, :]


@dataclass(frozen=True)
class CropBox:
    """A crop in source pixels: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def draw_crop(
    frame_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    mode: Literal["center", "random"],
    scale: tuple[float, float] = (0.8, 1.0),
    generator: torch.Generator | None = None,
) -> CropBox:
    """Choose the crop box of one video.

    The box has the aspect ratio of ``out_size`` and is the largest such box in the frame,
    shrunk by a factor ``s``. ``"center"``: ``s = scale[1]``, centred. ``"random"``: ``s``
    uniform in ``scale`` and a uniform position, drawn from ``generator``.

    Args:
        frame_size: ``(H, W)`` of the decoded frames.
        out_size: ``(h, w)`` after resizing.
        mode: ``"center"`` (evaluation) or ``"random"`` (training augmentation).
        scale: ``(min, max)`` side fraction, ``0 < min <= max <= 1``.
        generator: Required for ``"random"``.
    """
    h0, w0 = frame_size
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1; got {scale!r}.")
    aspect = out_size[1] / out_size[0]
    bh, bw = (h0, h0 * aspect) if h0 * aspect <= w0 else (w0 / aspect, w0)
    if mode == "center":
        s = hi
    elif mode == "random":
        if generator is None:
            raise ValueError("crop mode 'random' needs generator= (a seeded torch.Generator).")
        s = lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))
    else:
        raise ValueError(f"crop mode must be 'center' or 'random'; got {mode!r}.")
    ch, cw = max(1, round(bh * s)), max(1, round(bw * s))
    if mode == "center":
        return CropBox((h0 - ch) // 2, (w0 - cw) // 2, ch, cw)
    top = int(torch.randint(0, h0 - ch + 1, (), generator=generator))
    left = int(torch.randint(0, w0 - cw + 1, (), generator=generator))
    return CropBox(top, left, ch, cw)


DEFAULT_DECODE_CACHE_BYTES = 256 * 2**20


class MediaSnippetSource:
    """A :class:`~sgs_tad.engine.sources.SnippetSource` that decodes snippets of a file on demand.

    Args:
        path: Video file (``kind="video"``, PyAV) or frame folder (``kind="frames"``, Pillow).
        frame_indices: ``LongTensor [N, L]`` from :func:`snippet_frame_indices`.
        kind: ``"video"`` or ``"frames"``.
        crop: The crop box, decided once for this video (see :func:`draw_crop`).
        size: Output ``(H, W)``.
        mean: Per-channel mean subtracted after scaling pixels to ``[0, 1]`` (float output).
        std: Per-channel standard deviation divided by (finite, > 0; float output).
        video_id: The video's id, named in errors.
        cache_bytes: When all N snippets of the video take at most this many bytes as
            ``uint8`` (``N · 3 · L · H · W``), the first request decodes the whole video in one
            pass and keeps the snippets (as ``uint8``, whatever ``dtype``), so later requests
            (the other phase-1 micro-batches, phase 3's re-forward) are served from memory
            instead of decoding the file again; the source, and its cache, live as long as the
            batch. Larger videos decode per request, so a long video is never held whole.
            ``0`` turns the cache off.
        dtype: ``"float32"``: normalised snippets, ``(x / 255 - mean) / std``. ``"uint8"``: the
            pixels after crop and resize, a quarter of the bytes; the encoder normalises them
            on its device (the built-in encoders do, see
            :meth:`~sgs_tad.encoders.VideoEncoder.normalise_input`).
        pin_memory: Return snippets in pinned memory when CUDA is available, so that the
            engine's ``non_blocking`` copy to the GPU is asynchronous. The engine's prefetch
            thread runs ``get_snippets``, so the pinning happens there, off the main thread.
        bad_videos: A shared :class:`~sgs_tad.data.failures.BadVideoLimit` that counts this
            video when it fails to decode (and stops the run after too many).

    The pipeline is ``uint8`` up to the normalisation: decode, crop, resize (antialiased when
    shrinking) to ``uint8``; the ``float32`` output is that ``uint8`` tensor normalised by
    :func:`~sgs_tad.engine.pixels.normalise_pixels`, the very function the encoders run on
    ``uint8`` input. Hence a ``uint8`` source with the encoder's normalisation gives the same
    features as a ``float32`` source, and a cached video the same values as an uncached one.
    Frames are transformed in chunks as they are decoded, so memory holds the small output and
    a few full-resolution frames, whatever the video's resolution.

    ``get_snippets(indices)`` returns ``[n, 3, L, H, W]`` of ``dtype``. The object holds only
    the path and small tensors (no open file, and an empty cache when pickled), so it pickles
    to DataLoader workers.

    A file that fails to decode (corrupt content behind a valid header, a truncated file)
    raises :class:`~sgs_tad.engine.sources.SnippetReadError` naming the video id and the file,
    chained to the decoder's error; the trainer's ``on_bad_video="skip"`` then skips and counts
    it. A file removed since the data set was built raises it with ``reason="missing file"``
    and a message that says so.
    """

    def __init__(
        self,
        path: str | Path,
        frame_indices: torch.Tensor,
        *,
        kind: Literal["video", "frames"],
        crop: CropBox,
        size: tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        video_id: str | None = None,
        cache_bytes: int = DEFAULT_DECODE_CACHE_BYTES,
        dtype: Literal["float32", "uint8"] = "float32",
        pin_memory: bool = False,
        bad_videos: BadVideoLimit | None = None,
    ) -> None:
        check_normalisation(mean, std)
        if kind not in ("video", "frames"):
            raise ValueError(f"kind must be 'video' or 'frames'; got {kind!r}.")
        if dtype not in ("float32", "uint8"):
            raise ValueError(
                f"dtype must be 'float32' (normalised snippets) or 'uint8' (pixels the encoder "
                f"normalises on its device); got {dtype!r}."
            )
        if frame_indices.dim() != 2:
            raise ValueError(
                f"frame_indices must be [N, L]; got shape {tuple(frame_indices.shape)}."
            )
        self.path = Path(path)
        self.frame_indices = frame_indices.long()
        self.kind = kind
        self.crop = crop
        self.size = (int(size[0]), int(size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1, 1)
        self.video_id = video_id
        self.cache_bytes = int(cache_bytes)
        self.dtype = dtype
        self.pin_memory = bool(pin_memory)
        self.bad_videos = bad_videos
        self._files: list[Path] | None = None
        self._cache: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_cache"] = None  # decoded snippets stay in the process that decoded them
        return state

    @property
    def whole_video_bytes(self) -> int:
        """Bytes of all N snippets as ``uint8`` after crop and resize (what the cache holds)."""
        return len(self) * 3 * int(self.frame_indices.shape[1]) * self.size[0] * self.size[1]

    def __len__(self) -> int:
        return int(self.frame_indices.shape[0])

    def __repr__(self) -> str:
        return (
            f"MediaSnippetSource({str(self.path)!r}, kind={self.kind!r}, N={len(self)}, "
            f"L={self.frame_indices.shape[1]}, size={self.size}, crop={self.crop}, "
            f"dtype={self.dtype!r})"
        )

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode and transform snippets ``indices`` (1-D) into ``[n, 3, L, H, W]``."""
        indices = torch.as_tensor(indices).long().reshape(-1)
        n = int(indices.numel())
        if n and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(
                f"snippet indices must be in [0, {len(self)}); got min {int(indices.min())}, "
                f"max {int(indices.max())}."
            )
        length = int(self.frame_indices.shape[1])
        if n == 0:
            return self.deliver(torch.empty(0, 3, length, *self.size, dtype=torch.uint8))
        if self._cache is not None:
            return self.deliver(self._cache[indices])
        if 0 < self.whole_video_bytes <= self.cache_bytes:
            # Kept even when this request is the whole video (a phase-1 call of N snippets):
            # phase 3 then slices it instead of decoding the video a second time.
            self._cache = self.decode_uint8(torch.arange(len(self)))
            return self.deliver(self._cache[indices])
        return self.deliver(self.decode_uint8(indices))

    def deliver(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8`` snippets as this source returns them (normalised, pinned, as configured)."""
        return _deliver(pixels, self.dtype, self.mean, self.std, self.pin_memory)

    def decode_uint8(self, indices: torch.Tensor, *, count_failure: bool = True) -> torch.Tensor:
        """Decode snippets ``indices`` to ``uint8 [n, 3, L, H, W]`` (cropped and resized).

        Args:
            indices: Snippet indices, 1-D.
            count_failure: Report a failure to ``bad_videos`` (``False`` where the caller
                retries lazily, as the data set's worker decoding does).

        Raises:
            SnippetReadError: the file is missing (``reason="missing file"``) or cannot be
                decoded.
        """
        n, length = int(indices.numel()), int(self.frame_indices.shape[1])
        wanted = self.frame_indices[indices].reshape(-1).tolist()
        what = "video" if self.video_id is None else f"video {self.video_id!r}"
        try:
            if self.kind == "video":
                frames = decode_video_frames(self.path, wanted, transform=self._transform)
            else:
                if self._files is None:
                    self._files = list_frame_files(self.path)
                frames = read_frame_files(self._files, wanted, transform=self._transform)
        except decoder_errors() as err:
            if not self.path.exists():
                error = SnippetReadError(
                    f"the file of {what}, {str(self.path)!r}, is missing: it was there when the "
                    "data set was built and has been moved or deleted since (or its disk was "
                    "unmounted). Restore it, or remove the video from the annotation file.",
                    video_id=self.video_id,
                    path=self.path,
                    reason="missing file",
                )
            else:
                error = SnippetReadError(
                    f"could not decode {what} ({str(self.path)!r}), frames {min(wanted)}-"
                    f"{max(wanted)}: {type(err).__name__}: {err}. The file is corrupt or "
                    "truncated (its header was readable when the data set was built): re-encode "
                    "or replace it, or remove the video from the annotation file.",
                    video_id=self.video_id,
                    path=self.path,
                )
            if self.bad_videos is not None and count_failure:
                self.bad_videos.report(error)  # raises once too many videos have failed
            raise error from err
        return torch.from_numpy(frames).view(n, length, 3, *self.size).transpose(1, 2).contiguous()

    def _transform(self, frames: np.ndarray) -> np.ndarray:
        """``uint8 [M, H0, W0, 3]`` -> cropped and resized ``uint8 [M, 3, H, W]``."""
        c = self.crop
        x = torch.from_numpy(frames)[:, c.top : c.top + c.height, c.left : c.left + c.width]
        x = x.permute(0, 3, 1, 2)
        if (c.height, c.width) != self.size:
            down = c.height > self.size[0] or c.width > self.size[1]
            # uint8 in, uint8 out: torch's uint8 bilinear kernel (antialiased when shrinking)
            # rounds once, and is several times faster than a float round trip.
            x = F.interpolate(
                x.contiguous(),
                size=self.size,
                mode="bilinear",
                align_corners=False,
                antialias=down,
            )
        return x.contiguous().numpy()


def _deliver(
    pixels: torch.Tensor,
    dtype: Literal["float32", "uint8"],
    mean: torch.Tensor,
    std: torch.Tensor,
    pin_memory: bool,
) -> torch.Tensor:
    x = normalise_pixels(pixels, mean, std) if dtype == "float32" else pixels
    return pin_if_cuda(x) if pin_memory else x


class DecodedSource:
    """A video's snippets decoded ahead of time, held as ``uint8 [N, 3, L, H, W]``.

    What :class:`~sgs_tad.data.ActivityNetDataset` (``decode_in_workers=True``) hands over
    from a DataLoader worker: the ``uint8`` tensor travels to the main process in shared
    memory, and ``get_snippets`` only indexes it (then normalises and pins as configured).

    Args:
        pixels: ``uint8 [N, 3, L, H, W]``, e.g. from :meth:`MediaSnippetSource.decode_uint8`.
        dtype: ``"float32"`` (normalised with ``mean``/``std``) or ``"uint8"`` (as stored).
        mean: Per-channel mean (float output).
        std: Per-channel standard deviation (float output).
        pin_memory: Return pinned memory when CUDA is available.
        video_id: The video's id.
        path: The file it was decoded from.
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        *,
        dtype: Literal["float32", "uint8"] = "float32",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pin_memory: bool = False,
        video_id: str | None = None,
        path: str | Path | None = None,
    ) -> None:
        if (
            not isinstance(pixels, torch.Tensor)
            or pixels.dtype != torch.uint8
            or pixels.dim() != 5
        ):
            got = (
                (pixels.dtype, tuple(pixels.shape)) if isinstance(pixels, torch.Tensor) else pixels
            )
            raise TypeError(f"DecodedSource expects uint8 pixels [N, 3, L, H, W]; got {got!r}.")
        check_normalisation(mean, std)
        self.pixels = pixels
        self.dtype = dtype
        # Plain numbers, not tensors: every tensor of a worker's item travels through its own
        # shared-memory segment, and two more per video cost more than they carry.
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(v) for v in std)
        self.pin_memory = bool(pin_memory)
        self.video_id = video_id
        self.path = None if path is None else Path(path)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def __repr__(self) -> str:
        return (
            f"DecodedSource(video_id={self.video_id!r}, shape={tuple(self.pixels.shape)}, "
            f"dtype={self.dtype!r})"
        )

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        indices = torch.as_tensor(indices).long().reshape(-1)
        pixels = self.pixels[indices]
        x = normalise_pixels(pixels, self.mean, self.std) if self.dtype == "float32" else pixels
        return pin_if_cuda(x) if self.pin_memory else x


class SliceSource:
    """Snippets ``start:stop`` of any snippet source (a sliding window over a long video)."""

    def __init__(self, source: SnippetSource, start: int, stop: int) -> None:
        n = len(source)
        if not 0 <= start < stop <= n:
            raise ValueError(f"need 0 <= start < stop <= {n}; got start={start}, stop={stop}.")
        self.source = source
        self.start = int(start)
        self.stop = int(stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        indices = torch.as_tensor(indices).long()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"snippet indices must be in [0, {len(self)}).")
        return self.source.get_snippets(indices + self.start)
