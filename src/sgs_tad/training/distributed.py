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

Timeouts: :func:`init_distributed` joins the process group with a collective timeout
(``timeout=``, else the ``SGS_TAD_DDP_TIMEOUT`` environment variable in seconds, else
:data:`DEFAULT_DDP_TIMEOUT_S`) instead of torch's 30 minutes for gloo. Every collective of
this module runs through a guard: when one fails, the error is re-raised as a
:class:`CollectiveError` naming this rank, the operation and the timeout, and for a timeout
a :func:`torch.distributed.monitored_barrier` on a separate gloo group (made by
:func:`init_distributed`) names the rank(s) that did not answer. (Under NCCL, torch's
watchdog usually reports and ends a timed-out collective before Python sees it.)
"""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

__all__ = [
    "DDP_TIMEOUT_ENV",
    "DEFAULT_DDP_TIMEOUT_S",
    "CollectiveError",
    "GradientReducer",
    "ShardedSampler",
    "all_reduce_buffers",
    "barrier",
    "broadcast_module_states",
    "check_same_on_all_ranks",
    "gather_objects",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "resolve_ddp_timeout",
    "resolve_device",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# torch >= 2.3 takes the rank's device at init_process_group (read once, at import).
_INIT_TAKES_DEVICE_ID = "device_id" in inspect.signature(dist.init_process_group).parameters

#: Environment variable with the collective timeout in seconds (read by init_distributed).
DDP_TIMEOUT_ENV = "SGS_TAD_DDP_TIMEOUT"
#: Default collective timeout: long enough for rank 0 to generate data or save a checkpoint
#: while the others wait, short enough that one stuck rank does not hold the job for long.
DEFAULT_DDP_TIMEOUT_S = 600.0
#: The most a failed collective waits in the monitored barrier that finds the missing ranks.
_DIAGNOSIS_TIMEOUT_S = 60.0

_timeout_s: float | None = None  # the timeout init_distributed gave the process group
# A gloo group of every rank, used only to find the ranks missing after a timeout: the
# timed-out group's connections are closed by gloo, so a barrier there cannot tell.
_monitor_group: Any = None


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names the rank, operation and timeout.

    Attributes:
        rank: This process's rank.
        operation: The collective (``"all_reduce of the gradients"``, ``"barrier"``, ...).
        timeout_s: The process group's timeout in seconds, when known.
        missing_ranks: The ranks that did not answer the monitored barrier, when found.
        timed_out: Whether the failure was a timeout.
    """

    def __init__(
        self,
        message: str,
        *,
        rank: int,
        operation: str,
        timeout_s: float | None,
        missing_ranks: list[int] | None,
        timed_out: bool,
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.operation = operation
        self.timeout_s = timeout_s
        self.missing_ranks = missing_ranks
        self.timed_out = timed_out


def resolve_ddp_timeout(timeout: float | datetime.timedelta | None = None) -> datetime.timedelta:
    """The collective timeout: ``timeout``, else ``$SGS_TAD_DDP_TIMEOUT``, else the default.

    Args:
        timeout: Seconds, or a ``timedelta``; ``None`` reads the environment variable.

    Raises:
        ValueError: for a timeout that is not a number of seconds > 0.
    """
    source = "timeout"
    value: Any = timeout
    if value is None:
        raw = os.environ.get(DDP_TIMEOUT_ENV, "").strip()
        source = f"${DDP_TIMEOUT_ENV}"
        value = raw if raw else DEFAULT_DDP_TIMEOUT_S
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    else:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(
            f"{source} must be a number of seconds > 0 (the collective timeout of DDP "
            f"training); got {value!r}. Example: {DDP_TIMEOUT_ENV}=600."
        )
    return datetime.timedelta(seconds=seconds)


def init_distributed(
    backend: str | None = None,
    *,
    timeout: float | datetime.timedelta | None = None,
    device: str | torch.device | None = None,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> tuple[int, int]:
    """Join the process group (as started by ``torchrun``) with a collective timeout.

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) and without ``world_size`` this does
    nothing and returns ``(0, 1)``; with a group already initialised it returns its rank and
    size.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default ``"nccl"`` for a CUDA ``device``, else
            ``"gloo"``.
        timeout: Collective timeout, seconds or a ``timedelta``: a rank that waits longer in a
            collective (for a stuck or dead rank) fails with a :class:`CollectiveError` naming
            the rank(s) that did not answer. Default ``$SGS_TAD_DDP_TIMEOUT``, else
            :data:`DEFAULT_DDP_TIMEOUT_S` (torch's own default is 30 minutes for gloo).
        device: The training device, to choose the backend and, on CUDA, this rank's GPU
            (:func:`resolve_device`: ``"cuda"`` means ``cuda:$LOCAL_RANK``), made the current
            device *before* the process group is joined (and passed as ``device_id``).
        init_method: Passed to :func:`torch.distributed.init_process_group` (default: the
            ``env://`` variables torchrun sets).
        rank: This process's rank (default ``$RANK``).
        world_size: Number of processes (default ``$WORLD_SIZE``).

    Returns:
        ``(rank, world_size)``.

    Raises:
        ValueError: an explicit ``cuda:N`` other than ``cuda:$LOCAL_RANK`` under torchrun.
    """
    global _timeout_s, _monitor_group
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
    if world <= 1:
        return 0, 1
    td = resolve_ddp_timeout(timeout)
    dev = resolve_device(device) if device is not None else None
    cuda = dev is not None and dev.type == "cuda"
    backend = backend or ("nccl" if cuda else "gloo")
    options: dict[str, Any] = {}
    if cuda:
        # Before the process group: NCCL binds its communicator to the current device, and
        # every later `.cuda()` / `device="cuda"` of this rank must mean the same GPU.
        torch.cuda.set_device(dev)
        if backend == "nccl" and _INIT_TAKES_DEVICE_ID:
            options["device_id"] = dev  # the communicator is made eagerly, on this GPU
    dist.init_process_group(
        backend,
        init_method=init_method,
        timeout=td,
        world_size=world,
        rank=-1 if rank is None else int(rank),
        **options,
    )
    _timeout_s = td.total_seconds()
    # Host-side waits (barrier()) and the diagnosis of timeouts run on this gloo group: no
    # GPU spinning in an NCCL barrier, no NCCL watchdog.
    _monitor_group = dist.new_group(backend="gloo", timeout=td)
    logger.info(
        "process group: %s, rank %d of %d, collective timeout %.0f s",
        backend,
        dist.get_rank(),
        world,
        _timeout_s,
    )
    return dist.get_rank(), dist.get_world_size()


def _is_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


def _missing_ranks(timeout_s: float) -> tuple[list[int] | None, str]:
    """After a timeout: which ranks do not reach a monitored barrier of the monitor group.

    Returns:
        ``(ranks, note)``: the ranks that did not answer (``[]``: all answered), or ``None``
        with a note saying why they could not be found.
    """
    if _monitor_group is None:
        return None, (
            "the ranks that did not answer are unknown (join the process group with "
            "sgs_tad.training.distributed.init_distributed to have them named)"
        )
    try:
        dist.monitored_barrier(
            group=_monitor_group,
            timeout=datetime.timedelta(seconds=timeout_s),
            wait_all_ranks=True,
        )
    except (RuntimeError, ValueError) as err:
        found = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(err))
        if found:
            return [int(r) for r in found.group(1).replace(" ", "").split(",") if r], ""
        return None, (
            "rank 0 did not confirm a barrier afterwards: rank 0 is stuck itself, or its "
            "error names the rank(s) that did not answer"
        )
    return [], ""


def _guard(operation: str, collective: Callable[[], T]) -> T:
    """Run ``collective``; on failure raise :class:`CollectiveError` naming rank and timeout."""
    try:
        return collective()
    except CollectiveError:
        raise
    except RuntimeError as err:
        rank, world = dist.get_rank(), dist.get_world_size()
        timeout_s = _timeout_s
        limit = f"{timeout_s:g} s" if timeout_s is not None else "the process group's timeout"
        if not _is_timeout(err):
            raise CollectiveError(
                f"{operation} failed on rank {rank} of {world}: {err}. If another rank failed "
                "or timed out first, its error names the cause.",
                rank=rank,
                operation=operation,
                timeout_s=timeout_s,
                missing_ranks=None,
                timed_out=False,
            ) from err
        missing, note = _missing_ranks(
            min(timeout_s or _DIAGNOSIS_TIMEOUT_S, _DIAGNOSIS_TIMEOUT_S)
        )
        if missing:
            who = (
                f"rank(s) {missing} did not answer (not in this collective, nor in a barrier "
                "within the timeout afterwards): they are stuck, dead or far behind; see "
                "their logs"
            )
        elif missing == []:
            who = (
                "every rank answered a barrier afterwards, so the ranks ran different "
                "collectives (different numbers of steps or batches, or a collective on "
                "one rank only)"
            )
        else:
            who = note
        raise CollectiveError(
            f"{operation} timed out on rank {rank} of {world} after {limit}: {who}. If a rank "
            f"legitimately waits longer (rank 0 writing data or checkpoints), raise the "
            f"timeout (init_distributed(timeout=...), ${DDP_TIMEOUT_ENV}, or --ddp-timeout "
            "in the main job).",
            rank=rank,
            operation=operation,
            timeout_s=timeout_s,
            missing_ranks=missing,
            timed_out=True,
        ) from err


def barrier(operation: str = "barrier") -> None:
    """Wait for every rank (a no-op without a process group); guarded like every collective.

    The wait runs on the gloo group :func:`init_distributed` makes (the default group
    otherwise): a rank waiting for rank 0 to prepare data must not sit in an NCCL barrier,
    which spins on the GPU under NCCL's watchdog.

    Args:
        operation: What the barrier waits for, named in the error when it times out.
    """
    if is_distributed():
        group = _monitor_group
        _guard(operation, lambda: dist.barrier(group=group))


def resolve_device(device: str | torch.device) -> torch.device:
    """This rank's training device: ``"cuda"`` under torchrun is ``cuda:$LOCAL_RANK``.

    Put the modules on this device. One GPU per process is the contract of the trainer, so
    an explicit ``cuda:N`` is accepted under torchrun only when ``N`` is the local rank: a
    ``cuda:0`` on every rank would stack all ranks' models on GPU 0 while NCCL works on GPU
    ``LOCAL_RANK``. (To pick other GPUs, set ``CUDA_VISIBLE_DEVICES``.)

    Raises:
        ValueError: an explicit index other than ``$LOCAL_RANK`` under torchrun.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    local = os.environ.get("LOCAL_RANK")
    if local is None:  # not under torchrun: the device as given (cuda = the current GPU)
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.index is not None and dev.index != int(local):
        raise ValueError(
            f"device {str(dev)!r} under torchrun with LOCAL_RANK={local}: every rank would "
            f"use GPU {dev.index} while NCCL uses GPU LOCAL_RANK. Pass --device cuda "
            "(device='cuda': each rank takes cuda:$LOCAL_RANK), or choose the GPUs with "
            "CUDA_VISIBLE_DEVICES."
        )
    return torch.device("cuda", int(local))


def all_reduce_buffers(module: nn.Module) -> None:
    """Average ``module``'s floating-point buffers over ranks (a no-op without a group).

    Running statistics (ETAD's ``FeatureStandardizer`` mean/var, a BatchNorm's) are updated
    from each rank's own batches; without this the ranks normalise differently and rank 0's
    statistics alone are saved. :class:`~sgs_tad.SGSTrainer` calls it on the detector after
    every optimizer step (SGS runs no DDP forward, so DDP's ``broadcast_buffers`` never
    does). Integer and bool buffers (counters, flags) are left alone. One collective per
    dtype and device.
    """
    if not is_distributed():
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for buf in module.buffers():
        if buf.is_floating_point():
            groups.setdefault((buf.dtype, buf.device), []).append(buf)
    world = dist.get_world_size()
    for bufs in groups.values():
        flat = torch.cat([b.detach().reshape(-1) for b in bufs])
        _guard("all_reduce of the module buffers", functools.partial(dist.all_reduce, flat))
        flat.div_(world)
        offset = 0
        with torch.no_grad():
            for b in bufs:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


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

    def run() -> None:
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=src)

    _guard(f"broadcast of the module states from rank {src}", run)


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
            _guard("all_reduce of the step flags", lambda: dist.all_reduce(summed))
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
            _guard("all_reduce of the gradients", functools.partial(dist.all_reduce, buf))
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
    _guard(f"all_reduce checking {what}", lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
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
    _guard("all_gather_object", lambda: dist.all_gather_object(out, obj))
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
