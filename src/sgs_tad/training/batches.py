"""The batch contract of :class:`~sgs_tad.training.trainer.SGSTrainer` and its collate function.

A batch is a mapping with one required key, ``"snippets"``, holding what the engine
encodes: a tensor ``[B, N, *S]``, a list of per-video tensors ``[N_i, *S]`` (videos of
different lengths), or a list of :class:`~sgs_tad.engine.sources.SnippetSource`. Every other key is
passed through untouched to the detector step (targets, video ids, durations, ...).

A dataset item is a mapping with the same keys for one video (``"snippets"`` being
``[N_i, *S]`` or a source); :func:`collate_videos` turns a list of items into a batch whose
values are lists with one entry per video, without padding: padding is the engine's job
(features come back ``[B, N_max, C]`` with a mask).

Example:
    >>> import torch
    >>> batch = collate_videos([
    ...     {"snippets": torch.zeros(5, 3), "label": 1},
    ...     {"snippets": torch.zeros(7, 3), "label": 0},
    ... ])
    >>> [s.shape[0] for s in batch["snippets"]], batch["label"]
    ([5, 7], [1, 0])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from sgs_tad.training.distributed import ShardedSampler

__all__ = [
    "SNIPPETS_KEY",
    "check_batch",
    "collate_videos",
    "count_snippets",
    "count_videos",
    "make_loader",
]

SNIPPETS_KEY = "snippets"


def collate_videos(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Collate per-video items into a batch of lists (one entry per video, no padding).

    Args:
        items: dataset items, each a mapping with ``"snippets"`` (``[N_i, *S]`` or a
            :class:`~sgs_tad.engine.sources.SnippetSource`) and the same other keys.

    Returns:
        ``{key: [value of video 0, value of video 1, ...]}``.

    Raises:
        TypeError: an item is not a mapping.
        ValueError: no items, or items with different keys.
    """
    if len(items) == 0:
        raise ValueError("collate_videos got an empty list of items; batch_size must be >= 1.")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(
                f"dataset item {i} is a {type(item).__name__}; collate_videos expects mappings"
                f" like {{'snippets': tensor [N, *S], ...targets}}."
            )
    keys = list(items[0].keys())
    if SNIPPETS_KEY not in keys:
        raise ValueError(
            f"dataset items have keys {keys} but no {SNIPPETS_KEY!r}; return"
            f" {{'{SNIPPETS_KEY}': tensor [N, *S] or SnippetSource, ...}} from __getitem__."
        )
    for i, item in enumerate(items[1:], start=1):
        if set(item.keys()) != set(keys):
            raise ValueError(
                f"dataset item {i} has keys {sorted(item)}, item 0 has {sorted(keys)};"
                " every item must have the same keys."
            )
    return {key: [item[key] for item in items] for key in keys}


def check_batch(batch: Any, required_keys: Sequence[str] = ()) -> Mapping[str, Any]:
    """Check that ``batch`` follows the contract and holds ``required_keys``.

    Raises:
        TypeError: ``batch`` is not a mapping.
        ValueError: a key is missing (the message lists the keys present).
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"a training batch must be a mapping with {SNIPPETS_KEY!r} and the detector's"
            f" targets; got {type(batch).__name__}. Use collate_fn=sgs_tad.training.batches."
            "collate_videos, or return a dict from your collate function."
        )
    for key in (SNIPPETS_KEY, *required_keys):
        if key not in batch:
            raise ValueError(
                f"the batch has keys {sorted(batch)} but the trainer needs {key!r}"
                + (
                    f" (required_keys={list(required_keys)})"
                    if key != SNIPPETS_KEY
                    else " (the snippets to encode)"
                )
                + ". Add it in the dataset item or the collate function."
            )
    return batch


def count_videos(snippets: Any) -> int:
    """B, the number of videos in the ``"snippets"`` of a batch."""
    if isinstance(snippets, torch.Tensor):
        return int(snippets.shape[0])
    return len(snippets)


def count_snippets(snippets: Any) -> int:
    """Total number of snippets over the videos of a batch."""
    if isinstance(snippets, torch.Tensor):
        return int(snippets.shape[0] * snippets.shape[1])
    total = 0
    for video in snippets:
        total += int(video.shape[0]) if isinstance(video, torch.Tensor) else len(video)
    return total


def make_loader(
    data: Any,
    *,
    seed: int,
    batch_size: int = 1,
    shuffle: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_last: bool = False,
) -> tuple[Any, ShardedSampler | None]:
    """A ``DataLoader`` over a map-style dataset, sharded over ranks; iterables pass through.

    A dataset (anything with ``__len__`` and ``__getitem__`` that is not a ``DataLoader`` or
    a mapping, e.g. a list of per-video items) gets a
    :class:`~sgs_tad.training.distributed.ShardedSampler` whose order depends only on ``seed`` and
    the epoch. Any other iterable is taken as an iterable of batches and returned as it is.

    Returns:
        ``(loader, sampler)``; ``sampler`` is ``None`` for a pass-through iterable.

    Raises:
        ValueError: the dataset is empty.
        TypeError: an ``IterableDataset`` (items, not batches) or a non-iterable.
    """
    if isinstance(data, IterableDataset):
        raise TypeError(
            "an IterableDataset yields items, not batches: wrap it in a DataLoader with"
            " collate_fn=sgs_tad.training.batches.collate_videos and pass that."
        )
    if (
        hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
        and not isinstance(data, (DataLoader, Mapping))
    ):
        if len(data) == 0:
            raise ValueError("the dataset is empty (len 0); give it at least one video.")
        sampler = ShardedSampler(len(data), shuffle=shuffle, seed=seed, drop_last=drop_last)
        loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_fn or collate_videos,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed),
        )
        return loader, sampler
    if isinstance(data, Iterable):
        return data, None
    raise TypeError(
        "the data must be a map-style Dataset (len + __getitem__) of per-video items, or an"
        f" iterable of batches (e.g. a DataLoader); got {type(data).__name__}."
    )
