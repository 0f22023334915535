"""Packing the snippets of several videos into micro-batches, and back: the packing plan.

A *slot* is one snippet of one video: ``(video, index)``. A plan is an order of slots cut into
consecutive micro-batches; for each micro-batch the engine asks every video's
:class:`~sgs_tad.engine.sources.SnippetSource` only for its own snippets. Features are written
back to their ``[B, N_max]`` position, so the order in which the encoder saw the snippets
never leaks into the result.

:func:`plan_encode` makes the whole plan of one batch. With a sample drawn before phase 1
(feature-independent samplers) the sampled slots come first, cut at K, so the leading phase-1
micro-batches *are* the phase-3 ones: same snippets, same order, same size, hence the same
dropout masks when their RNG states are replayed (or their graphs kept). The unsampled slots
follow, cut at the phase-1 size, which may be larger than K: a forward without a graph keeps
no activations, so it can run more snippets per call, and nothing of it is ever replayed.

Example:
    >>> plan = plan_encode([5, 3], 2, picks=[torch.tensor([0, 4]), torch.tensor([1])],
    ...                    phase1_size=4)
    >>> [len(b) for b in plan.phase1], plan.num_sampled_batches
    ([2, 1, 4, 1], 2)
    >>> plan.phase1[1].videos.tolist(), plan.phase1[1].positions.tolist()
    ([1], [1])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from sgs_tad.engine.sources import SnippetSource, TensorSource

__all__ = [
    "PREFETCH_MIN_GATHER_S",
    "EncodePlan",
    "EncoderOutputError",
    "MicroBatch",
    "as_sources",
    "check_features",
    "device_indices",
    "draw_sample",
    "gathered",
    "num_sampled",
    "pack",
    "plan_encode",
    "plan_recompute",
    "prefetches",
]


class EncoderOutputError(ValueError):
    """The encoder (with its pool) did not map ``M`` snippets to features ``[M, C]``."""


def check_features(out: object, num_snippets: int) -> torch.Tensor:
    """``out`` if it is the ``[M, C]`` features of ``M = num_snippets`` snippets, else raise.

    Every engine, the planner and the independence check call the encoder through this test,
    so a feature map without a ``pool`` is refused with the same message everywhere.

    Raises:
        EncoderOutputError: ``out`` is not a tensor ``[num_snippets, C]``.
    """
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != num_snippets:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        m = num_snippets
        raise EncoderOutputError(
            f"the encoder (with pool) must map {m} snippets [M, *S] to features [M, C] = "
            f"[{m}, C]; it returned {shape}. If it returns a feature map, pass pool=..., e.g. "
            "pool=lambda x: x.flatten(2).mean(-1)."
        )
    return out


def num_sampled(num_snippets: int, ratio: float) -> int:
    """Snippets of a video of ``num_snippets`` that phase 3 back-propagates, for ratio γ.

    ``n = 0`` for γ = 0, otherwise ``n = min(N, max(1, ceil(γ·N)))``; ``γ·N`` is rounded to 9
    decimals first so that, e.g., γ = 0.3, N = 10 gives 3 and not 4.

    Example:
        >>> [num_sampled(128, r) for r in (0.0, 0.01, 0.3, 1.0)]
        [0, 2, 39, 128]
    """
    if ratio <= 0:
        return 0
    return min(num_snippets, max(1, math.ceil(round(ratio * num_snippets, 9))))


def draw_sample(
    sampler: Callable[..., torch.Tensor],
    n_items: int,
    ratio: float,
    features: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """The sorted indices of the snippets phase 3 back-propagates, checked.

    Args:
        sampler: ``sampler(num_items, num_samples, *, features=None, generator=None)``.
        n_items: Snippets of the video, N.
        ratio: γ; ``num_sampled(N, γ)`` indices are drawn (all of them at γ = 1).
        features: The video's phase-1 features ``[N, C]`` for feature-guided samplers.
        generator: The sampler's random generator.

    Returns:
        ``[n]`` distinct indices in ``[0, N)``, sorted, on the CPU.
    """
    k = num_sampled(n_items, ratio)
    if k == n_items:
        return torch.arange(n_items)
    idx = sampler(n_items, k, features=features, generator=generator)
    idx = torch.as_tensor(idx, dtype=torch.long).cpu().flatten()
    if (
        idx.numel() != k
        or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_items))
        or torch.unique(idx).numel() != k
    ):
        raise ValueError(
            f"snippet sampler {sampler!r} returned {idx.tolist()[:8]}… for "
            f"num_items={n_items}, num_samples={k}; a sampler must return {k} distinct "
            f"indices in [0, {n_items})."
        )
    return torch.sort(idx).values


@dataclass(frozen=True)
class MicroBatch:
    """One encoder call: the slots it holds, in the order the encoder sees them.

    Attributes:
        videos: ``[m]`` video index of each row.
        positions: ``[m]`` snippet index of each row within its video.
        runs: ``(video, start, stop)`` of each run of consecutive rows of one video, when
            :func:`pack` made the micro-batch (it reads the whole plan back once, so that
            :meth:`gather` reads nothing per micro-batch); computed on demand otherwise.
    """

    videos: torch.Tensor
    positions: torch.Tensor
    runs: tuple[tuple[int, int, int], ...] | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return int(self.videos.numel())

    def gather(self, sources: Sequence[SnippetSource]) -> torch.Tensor:
        """Fetch this micro-batch's snippets ``[m, *S]``, one request per video run."""
        runs = self.runs if self.runs is not None else _runs(self.videos.tolist())
        # Consecutive rows of the same video become one request, so a lazy source decodes a
        # contiguous run at once instead of one snippet at a time.
        parts = [sources[v].get_snippets(self.positions[a:b]) for v, a, b in runs]
        if len(parts) == 1:
            return parts[0]
        if parts[0].device.type == "cpu" and parts[0].is_pinned():
            # Sources that pin (pin_memory=True) keep the concatenation pinned too, else the
            # copy to the GPU would be staged synchronously after all.
            shape = (sum(int(p.shape[0]) for p in parts), *parts[0].shape[1:])
            out = torch.empty(shape, dtype=parts[0].dtype, pin_memory=True)
            return torch.cat(parts, dim=0, out=out)
        return torch.cat(parts, dim=0)


def _runs(videos: Sequence[int]) -> tuple[tuple[int, int, int], ...]:
    """``(video, start, stop)`` of each run of equal consecutive entries of ``videos``."""
    runs, start = [], 0
    while start < len(videos):
        stop = start
        while stop < len(videos) and videos[stop] == videos[start]:
            stop += 1
        runs.append((videos[start], start, stop))
        start = stop
    return tuple(runs)


def pack(videos: torch.Tensor, positions: torch.Tensor, size: int) -> list[MicroBatch]:
    """Cut an order of slots into consecutive micro-batches of at most ``size`` slots."""
    every = videos.tolist()  # once per plan (host tensors), not once per micro-batch
    return [
        MicroBatch(videos[i : i + size], positions[i : i + size], _runs(every[i : i + size]))
        for i in range(0, len(every), size)
    ]


def device_indices(
    batches: Sequence[MicroBatch], device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(videos, positions)`` of each micro-batch on ``device``, copied in one go.

    Indexing device features with the host index tensors of each micro-batch would copy them
    one micro-batch at a time, and a blocking host-to-device copy waits for the device to
    finish its queue: the host could not queue micro-batch ``j + 1`` while the device runs
    ``j``. One copy per plan, from pinned memory without blocking, keeps the host ahead.
    """
    if not batches or all(b.videos.device == device for b in batches):
        return [(b.videos, b.positions) for b in batches]
    both = torch.stack((torch.cat([b.videos for b in batches]),
                        torch.cat([b.positions for b in batches])))  # fmt: skip
    if device.type == "cuda":
        both = both.pin_memory()
    both = both.to(device, non_blocking=True)
    sizes = [len(b) for b in batches]
    return list(zip(both[0].split(sizes), both[1].split(sizes)))


@dataclass(frozen=True)
class EncodePlan:
    """The packing of one batch: phase-1 micro-batches, the first few of which phase 3 uses.

    Attributes:
        phase1: Every micro-batch of phase 1, in call order; together they hold every slot once.
        num_sampled_batches: How many leading ``phase1`` micro-batches hold exactly the sampled
            slots (pre-drawn sample); phase 3 back-propagates through those and no others. 0
            when no sample was drawn before phase 1.
    """

    phase1: list[MicroBatch]
    num_sampled_batches: int = 0

    @property
    def sampled(self) -> list[MicroBatch]:
        """The phase-3 micro-batches (a prefix of ``phase1``)."""
        return self.phase1[: self.num_sampled_batches]


def _slots(
    lengths: Sequence[int], picks: Sequence[torch.Tensor] | None
) -> tuple[torch.Tensor, ...]:
    """(videos, positions) of every slot, video by video; only ``picks`` if given."""
    if picks is None:
        picks = [torch.arange(n) for n in lengths]
    videos = torch.cat(
        [torch.full((int(p.numel()),), v, dtype=torch.long) for v, p in enumerate(picks)]
    )
    return videos, torch.cat([p.to(torch.long) for p in picks])


def plan_encode(
    lengths: Sequence[int],
    micro_batch_size: int,
    *,
    picks: Sequence[torch.Tensor] | None = None,
    phase1_size: int | None = None,
) -> EncodePlan:
    """The phase-1 plan of a batch of videos with ``lengths`` snippets.

    Args:
        lengths: N_i of each video.
        micro_batch_size: K, the size of the micro-batches phase 3 recomputes.
        picks: The pre-drawn sample, one sorted index tensor per video, or ``None`` (no sample
            before phase 1: feature-guided sampler, frozen encoder, inference).
        phase1_size: Size of the micro-batches that phase 3 never sees (default K).
    """
    size = phase1_size or micro_batch_size
    if picks is None:
        videos, positions = _slots(lengths, None)
        return EncodePlan(pack(videos, positions, size))
    sampled_v, sampled_p = _slots(lengths, picks)
    rest = []
    for n, idx in zip(lengths, picks):
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[idx] = True
        rest.append((~chosen).nonzero().flatten())
    rest_v, rest_p = _slots(lengths, rest)
    sampled = pack(sampled_v, sampled_p, micro_batch_size)
    return EncodePlan(sampled + pack(rest_v, rest_p, size), num_sampled_batches=len(sampled))


def plan_recompute(picks: Sequence[torch.Tensor], micro_batch_size: int) -> list[MicroBatch]:
    """Phase-3 micro-batches of a sample drawn after phase 1 (feature-guided samplers).

    These are new micro-batches, not phase-1 ones, so phase-1 RNG states cannot be replayed
    for them (see ``docs/transparency.md``).
    """
    videos, positions = _slots([int(p.numel()) for p in picks], picks)
    return pack(videos, positions, micro_batch_size)


def as_sources(snippets: object) -> list[SnippetSource]:
    """Normalise the engine's input to one :class:`SnippetSource` per video.

    Accepts a tensor ``[B, N, *S]``, a list/tuple of tensors ``[N_i, *S]``, or a list/tuple of
    snippet sources. Raises ``TypeError``/``ValueError`` naming what is wrong and the fix.
    """
    if isinstance(snippets, torch.Tensor):
        if snippets.dim() < 2:
            raise ValueError(
                f"snippets tensor must be [B, N, *S] (batch, snippets, snippet shape); got shape "
                f"{tuple(snippets.shape)}. For a single video pass snippets.unsqueeze(0)."
            )
        sources: list[SnippetSource] = [TensorSource(v) for v in snippets.unbind(0)]
    elif isinstance(snippets, (list, tuple)):
        if not snippets:
            raise ValueError("snippets is an empty list: pass at least one video.")
        sources = []
        shape: tuple[int, ...] | None = None
        for i, item in enumerate(snippets):
            if isinstance(item, torch.Tensor):
                if item.dim() < 1:
                    raise ValueError(f"video {i} is a 0-d tensor; each video must be [N_i, *S].")
                if shape is None:
                    shape = tuple(item.shape[1:])
                elif tuple(item.shape[1:]) != shape:
                    raise ValueError(
                        f"video {i} has snippet shape {tuple(item.shape[1:])} but video 0 has "
                        f"{shape}; all videos must share the snippet shape S of [N_i, *S]. "
                        "Resize or crop them to a common shape in the data pipeline."
                    )
                sources.append(TensorSource(item))
            elif isinstance(item, SnippetSource):
                sources.append(item)
            else:
                raise TypeError(
                    f"video {i} is a {type(item).__name__}; expected a tensor [N_i, *S] or a "
                    "SnippetSource (an object with __len__ and get_snippets(indices))."
                )
    elif isinstance(snippets, SnippetSource):
        raise TypeError(
            "snippets is a single SnippetSource; wrap it in a list ([source]) for a batch of one."
        )
    else:
        raise TypeError(
            f"snippets is a {type(snippets).__name__}; expected a tensor [B, N, *S], a list of "
            "tensors [N_i, *S], or a list of SnippetSource objects."
        )
    for i, source in enumerate(sources):
        if len(source) < 1:
            raise ValueError(
                f"video {i} has zero snippets; every video needs at least one. Drop empty videos "
                "in the data pipeline (or check the decoder: the file may be empty)."
            )
    return sources


#: ``prefetch="auto"`` starts the prefetch thread once a gather after the first took this long.
PREFETCH_MIN_GATHER_S = 1e-3


def prefetches(prefetch: bool | str, sources: Sequence[SnippetSource]) -> bool:
    """Whether :func:`gathered` gathers in a background thread.

    ``"auto"``: when some source is lazy (decoding is worth overlapping). Never when a source
    holds its snippets on a device (a CUDA :class:`TensorSource`), even with ``True``: there is
    nothing to decode, and the gather, a device op, would run on the worker thread's current
    stream with no event to order it, racing the caller's stream (``torch.cuda.stream(s)``).
    """
    on_device = any(
        isinstance(s, TensorSource) and s.snippets.device.type != "cpu" for s in sources
    )
    if on_device:
        return False
    if prefetch == "auto":
        return any(not isinstance(s, TensorSource) for s in sources)
    return bool(prefetch)


def gathered(
    batches: Sequence[MicroBatch],
    sources: Sequence[SnippetSource],
    *,
    prefetch: bool | str = "auto",
) -> Iterator[tuple[MicroBatch, torch.Tensor]]:
    """Each micro-batch with its snippets, the next one gathered in a thread when ``prefetch``.

    ``prefetch=True`` gathers every micro-batch in a background thread, the next one while the
    encoder runs the current one. ``prefetch="auto"`` does so only where it pays: with a lazy
    source (not a :class:`TensorSource`), and once a gather after the first took
    :data:`PREFETCH_MIN_GATHER_S` or more. The first gather is waited for whichever thread runs
    it, and those after it are often slices of a cache the first one filled (microseconds):
    handing them to a thread would only add a thread switch per micro-batch, which costs
    milliseconds on a busy machine. A decoding error is raised here, in micro-batch order.
    """
    if not prefetches(prefetch, sources) or len(batches) < 2:
        for batch in batches:
            yield batch, batch.gather(sources)
        return
    pool: ThreadPoolExecutor | None = None
    pending: Future[torch.Tensor] | None = None
    if prefetch is True:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgs-prefetch")
        pending = pool.submit(batches[0].gather, sources)
    try:
        for j, batch in enumerate(batches):
            if pending is not None:
                x = pending.result()  # re-raises a decoding error here, in order
            else:
                start = time.perf_counter()
                x = batch.gather(sources)
                if j > 0 and time.perf_counter() - start >= PREFETCH_MIN_GATHER_S:
                    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgs-prefetch")
            if pool is not None and j + 1 < len(batches):
                pending = pool.submit(batches[j + 1].gather, sources)
            yield batch, x
    finally:
        if pool is not None:
            pool.shutdown(wait=True)  # a pending gather finishes before its sources go away
