"""DDP glue for SGS training: one explicit gradient all-reduce per optimizer step.

Why not let :class:`~torch.nn.parallel.DistributedDataParallel` reduce the gradients?
DDP all-reduces each gradient bucket from an autograd hook during the backward pass, and
it expects every rank to run the same number of forward/backward passes through the wrapped
module. SGS breaks that expectation by design: phase 3 re-runs the encoder on a *sampled*
set of micro-batches, and two ranks with different video lengths (or a sampler that picks
different counts) run different numbers of encoder backward passes. A rank that runs one
more backward than the others waits in a collective the others never enter: the job hangs.
``no_sync()`` around all but "the last" backward does not save us either, because the last
backward may not exist on a rank that sampled nothing.

So the trainer runs every phase on the *unwrapped* modules (a DDP-wrapped model is
accepted and unwrapped with :func:`unwrap_model`; its reducer hooks stay idle because no
DDP forward arms them) and, once per optimizer step, :class:`GradientReducer` all-reduces
(averages) the gradients of a fixed list of parameters that is identical on every rank, in
flat buckets. A parameter that has no gradient on some rank contributes zeros; one that
has no gradient on any rank keeps ``grad = None`` (as without DDP). A few small flags ride
in the same collective (a non-finite loss on any rank, a stop request on any rank) so that
every rank takes the same decision without an extra round trip.

The result is the gradient DDP would compute: the average over ranks of each rank's
gradient. When each rank's loss is the mean over its local batch and the local batches
have equal size, this is the mean over the global batch (the single-process gradient on the
union of the data). With unequal local batch sizes it is a mean of per-rank means, which
weights the videos of a smaller local batch more; :class:`torch.utils.data.DistributedSampler`
pads the data so that ranks get equal counts (``drop_last=False``), only the last batch of
an epoch can then be smaller, and equally so on every rank.

Single-process use needs no process group: every function here falls back to a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

__all__ = [
    "GradientReducer",
    "ShardedSampler",
    "broadcast_module_states",
    "check_same_on_all_ranks",
    "gather_objects",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "unwrap_model",
]


def is_distributed() -> bool:
    """``True`` when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def unwrap_model(module: nn.Module) -> nn.Module:
    """Return the module inside a DDP wrapper (the module itself when it is not wrapped).

    Raises:
        TypeError: for :class:`~torch.nn.DataParallel`, which SGS does not support.
    """
    if isinstance(module, nn.DataParallel):
        raise TypeError(
            "nn.DataParallel is not supported: its replicas are rebuilt at every forward, so"
            " the engine's re-forward in phase 3 cannot see the same module. Pass the plain"
            " module and launch one process per GPU with torchrun (DistributedDataParallel)."
        )
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return module.module
    return module


@torch.no_grad()
def broadcast_module_states(modules: Sequence[nn.Module], *, src: int = 0) -> None:
    """Copy the parameters and buffers of ``modules`` from rank ``src`` to every rank.

    This is what DDP does when it wraps a module; call it once before training so every
    rank starts from the same weights. A no-op without a process group.
    """
    if not is_distributed():
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


class GradientReducer:
    """Average the gradients of a fixed parameter list over ranks, once per step.

    Args:
        parameters: the trainable parameters, in the same order on every rank.
        bucket_cap_mb: size of one flat all-reduce buffer; bigger buckets mean fewer
            collectives and more temporary memory.
        flags_device: where the flags go when ``parameters`` is empty.

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> layer(torch.ones(1, 2)).sum().backward()
        >>> GradientReducer(list(layer.parameters())).reduce([1.0, 0.0])  # single process
        [1.0, 0.0]
    """

    def __init__(
        self,
        parameters: Sequence[nn.Parameter],
        *,
        bucket_cap_mb: float = 25.0,
        flags_device: torch.device | None = None,
    ) -> None:
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be > 0; got {bucket_cap_mb!r}.")
        self.parameters = list(parameters)
        self.flags_device = flags_device or (
            self.parameters[0].device if self.parameters else torch.device("cpu")
        )
        cap = int(bucket_cap_mb * 2**20)
        # Buckets group parameters of one device and dtype, in parameter order; the order
        # (and so the bucket layout) is identical on every rank, which the all-reduce needs.
        self._buckets: list[list[int]] = []
        open_buckets: dict[tuple[torch.device, torch.dtype], tuple[list[int], int]] = {}
        for i, p in enumerate(self.parameters):
            key = (p.device, p.dtype)
            idxs, size = open_buckets.get(key, ([], 0))
            if idxs and size + p.numel() * p.element_size() > cap:
                self._buckets.append(idxs)
                idxs, size = [], 0
            idxs.append(i)
            open_buckets[key] = (idxs, size + p.numel() * p.element_size())
        self._buckets.extend(idxs for idxs, _ in open_buckets.values() if idxs)
        # The flags (loss sums among them) ride in the first fp32/fp64 bucket; with only
        # half-precision parameters they get a small collective of their own.
        wide = (torch.float32, torch.float64)
        self._flags_bucket: int | None = next(
            (b for b, idxs in enumerate(self._buckets) if self.parameters[idxs[0]].dtype in wide),
            None,
        )

    @torch.no_grad()
    def reduce(self, flags: Sequence[float] = ()) -> list[float]:
        """All-reduce: average every gradient over ranks and sum ``flags``.

        Args:
            flags: small numbers (0/1 flags) summed over ranks in the same collective.

        Returns:
            The summed flags (``flags`` unchanged without a process group).
        """
        if not is_distributed():
            return [float(f) for f in flags]
        world = dist.get_world_size()
        summed: torch.Tensor | None = None
        if self._flags_bucket is None:
            summed = torch.tensor([float(f) for f in flags], device=self.flags_device)
            dist.all_reduce(summed)
        for b, idxs in enumerate(self._buckets):
            params = [self.parameters[i] for i in idxs]
            ref = params[0]
            parts = []
            for p in params:
                if p.grad is not None and p.grad.is_sparse:
                    raise TypeError(
                        "sparse gradients are not supported by the SGS gradient reduction;"
                        " use dense embeddings (sparse=False)."
                    )
                parts.append(
                    p.grad.reshape(-1).to(ref.dtype)
                    if p.grad is not None
                    else torch.zeros(p.numel(), dtype=ref.dtype, device=ref.device)
                )
            has_grad = torch.tensor(
                [p.grad is not None for p in params], dtype=ref.dtype, device=ref.device
            )
            extra = [has_grad]
            if b == self._flags_bucket:
                extra.append(torch.tensor([float(f) for f in flags], dtype=ref.dtype))
            buf = torch.cat([*parts, *(t.to(ref.device) for t in extra)])
            dist.all_reduce(buf)
            n_total = sum(p.numel() for p in params)
            counts = buf[n_total : n_total + len(params)].tolist()
            if b == self._flags_bucket:
                summed = buf[n_total + len(params) :].clone()
            offset = 0
            for p, count in zip(params, counts):
                grad = buf[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if count == 0:
                    continue  # no rank produced a gradient: keep None, as without DDP
                grad = grad.div(world)
                if p.grad is None:
                    p.grad = grad.to(p.dtype)
                else:
                    p.grad.copy_(grad)
        assert summed is not None  # set by the flags bucket or the separate collective
        return summed.tolist()


def check_same_on_all_ranks(value: int, what: str) -> None:
    """Raise on every rank when ``value`` differs between ranks (one small collective).

    Used before an epoch: ranks iterating different numbers of batches would hang in the
    gradient all-reduce of the last step.
    """
    if not is_distributed():
        return
    t = torch.tensor([value, -value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = int(t[0].item()), int(-t[1].item())
    if hi != lo:
        raise ValueError(
            f"{what} differs between ranks (from {lo} to {hi}); every rank must run the same"
            " number of optimizer steps or the gradient all-reduce hangs. Shard map-style data"
            " with DistributedSampler (the trainer does it when given a Dataset), or make"
            " every rank's loader the same length."
        )


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` single-process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ShardedSampler(Sampler[int]):
    """A :class:`DistributedSampler` whose order depends only on (seed, epoch), and that can
    skip the indices already consumed in the epoch (for a mid-epoch resume).

    Without a process group it is a seeded shuffle (or the identity order) over the whole
    dataset. ``len`` is the number of indices still to come.

    Args:
        dataset_len: number of samples in the dataset.
        shuffle: shuffle with ``seed + epoch``.
        seed: shuffle seed, the same on every rank.
        drop_last: drop the tail instead of padding ranks to equal counts.
    """

    def __init__(
        self, dataset_len: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> None:
        self._inner: DistributedSampler[int] = DistributedSampler(
            range(dataset_len),  # type: ignore[arg-type]  # only len() is used
            num_replicas=get_world_size(),
            rank=get_rank(),
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """Select the order of ``epoch`` and skip its first ``skip`` indices."""
        self._inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self._inner):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(len(self._inner) - self.skip, 0)
