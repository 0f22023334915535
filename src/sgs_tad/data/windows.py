"""THUMOS-style sliding windows over long videos.

Long videos are not resampled to a fixed T: snippets are taken at a fixed rate
(``ActivityNetDataset(num_snippets=None, ...)``) and the resulting sequence is cut into windows
of ``window`` snippets every ``stride`` snippets (128 and 64 by default); the last window is
aligned to the end so every snippet is covered. A video shorter than one window is one item.

Example:
    >>> sliding_windows(300, window=128, stride=64)
    [(0, 128), (64, 192), (128, 256), (172, 300)]
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch.utils.data import Dataset

from sgs_tad.data.dataset import VideoSample
from sgs_tad.data.snippets import MediaSnippetSource, SliceSource

__all__ = ["WindowedDataset", "sliding_windows", "window_sample"]


def sliding_windows(
    num_snippets: int, *, window: int = 128, stride: int = 64
) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` snippet ranges covering ``range(num_snippets)``."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1; got window={window}, stride={stride}.")
    if num_snippets < 1:
        raise ValueError(f"num_snippets must be >= 1; got {num_snippets}.")
    if num_snippets <= window:
        return [(0, num_snippets)]
    out = [(s, s + window) for s in range(0, num_snippets - window + 1, stride)]
    if out[-1][1] < num_snippets:
        out.append((num_snippets - window, num_snippets))
    return out


def window_sample(
    sample: VideoSample, start: int, stop: int, *, min_visible: float = 0.5
) -> VideoSample:
    """The part of ``sample`` made of snippets ``start:stop``.

    Ground truth is clipped to the window and kept when at least ``min_visible`` of the
    instance lies inside; segments are re-normalised to the window's span, and ``offset`` and
    ``duration`` give that span in seconds of the video.
    """
    times = sample.snippet_times
    n = int(times.numel())
    half = float(times[1] - times[0]) / 2 if n > 1 else sample.duration / 2
    t0 = max(0.0, float(times[start]) - half)
    t1 = min(sample.duration, float(times[stop - 1]) + half)
    span = max(t1 - t0, 1e-9)
    seconds = sample.segments.double() * sample.duration
    clipped = seconds.clamp(t0, t1)
    visible = (clipped[:, 1] - clipped[:, 0]) / (seconds[:, 1] - seconds[:, 0]).clamp_min(1e-9)
    keep = visible >= min_visible
    segments = ((clipped[keep] - t0) / span).float().clamp_(0.0, 1.0)
    features = None if sample.features is None else sample.features[start:stop]
    return VideoSample(
        source=SliceSource(sample.source, start, stop),
        segments=segments.reshape(-1, 2),
        labels=sample.labels[keep].clone(),
        video_id=sample.video_id,
        duration=span,
        fps=sample.fps,
        snippet_times=times[start:stop] - t0,
        offset=sample.offset + t0,
        features=features,
    )


class WindowedDataset(Dataset):
    """One item per sliding window of each video of ``dataset``.

    Args:
        dataset: An :class:`~sgs_tad.data.ActivityNetDataset` (usually built with
            ``num_snippets=None``), or anything with ``__len__``, ``__getitem__`` returning a
            :class:`VideoSample` and ``num_snippets_of(index)``.
        window: Snippets per window.
        stride: Snippets between window starts.
        min_visible: Fraction of an instance that must lie in a window to be kept there.
        drop_empty: Drop windows without ground truth (usual for training). Building the
            data set then reads every item's annotations once.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        window: int = 128,
        stride: int = 64,
        min_visible: float = 0.5,
        drop_empty: bool = False,
    ) -> None:
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1]; got {min_visible}.")
        self.dataset = dataset
        self.min_visible = float(min_visible)
        self.items: list[tuple[int, int, int]] = []
        for i in range(len(dataset)):
            ranges = sliding_windows(dataset.num_snippets_of(i), window=window, stride=stride)
            if drop_empty:
                # Only the annotations are read: never decode a whole video for them.
                sample = dataset.sample(i, decode=False) if _decodes(dataset) else dataset[i]
                ranges = [
                    r
                    for r in ranges
                    if window_sample(sample, *r, min_visible=min_visible).labels.numel()
                ]
            self.items.extend((i, a, b) for a, b in ranges)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> VideoSample:
        i, start, stop = self.items[index]
        if not _decodes(self.dataset):
            return window_sample(self.dataset[i], start, stop, min_visible=self.min_visible)
        # decode_in_workers: decode this window's snippets only, not the whole video per window.
        lazy = self.dataset.sample(i, decode=False)
        window = window_sample(lazy, start, stop, min_visible=self.min_visible)
        if not isinstance(lazy.source, MediaSnippetSource):  # features: already in memory
            return window
        return dataclasses.replace(window, source=self.dataset.decoded(lazy.source, start, stop))

    def set_epoch(self, epoch: int) -> None:
        """Forward to the wrapped data set (new crop draws)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def _decodes(dataset: Any) -> bool:
    """Whether ``dataset`` decodes its items in ``__getitem__`` (``decode_in_workers``)."""
    return bool(getattr(dataset, "decode_in_workers", False)) and hasattr(dataset, "decoded")
