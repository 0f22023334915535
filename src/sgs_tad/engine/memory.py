"""Measuring an encoder's memory: byte sizes, saved-for-backward and live-byte meters, and the
one-micro-batch probe :func:`measure_snippet_cost`.

The engine sizes itself from these (``micro_batch_size="auto"``, ``encode_batch_size="auto"``,
``keep_graphs="512MB"``) and the planner (:mod:`sgs_tad.plan`) predicts whole runs from them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> enc = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> cost = measure_snippet_cost(enc, (12,), micro_batch_size=2)
    >>> cost.saved_bytes > 0, cost.feature_bytes
    (True, 16)
    >>> format_bytes(parse_bytes("1.5GiB"))
    '1.5 GiB'
"""

from __future__ import annotations

import math
import re
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sgs_tad.engine.microbatch import check_features

__all__ = [
    "DeviceBytesMeter",
    "LiveBytesMeter",
    "SavedBytesMeter",
    "SnippetCost",
    "format_bytes",
    "measure_snippet_cost",
    "parse_bytes",
]

Pool = Callable[[torch.Tensor], torch.Tensor]

# ----------------------------------------------------------------------------- byte sizes

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(value: int | str) -> int:
    """Parse a memory size such as ``"16GB"``, ``"512MiB"``, ``"1.5G"`` or ``2**30``.

    Units are case-insensitive: ``KB``/``MB``/``GB``/``TB`` are decimal (10^3 steps),
    ``KiB``/``MiB``/``GiB``/``TiB`` binary (2^10 steps), and the single letters ``K``/``M``/
    ``G``/``T`` binary as in Slurm's ``--mem`` (``16G`` = 16 GiB). No unit or ``B`` means bytes.

    Args:
        value: A non-negative int of bytes, or a string: a number and an optional unit.

    Returns:
        The size in bytes, rounded down to an int.

    Raises:
        ValueError: The value is negative or not a size in a known unit.
        TypeError: The value is neither an int nor a string.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"memory size must be an int of bytes or a string like '16GB', got "
            f"{type(value).__name__} {value!r}."
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory size must be >= 0 bytes, got {value}.")
        return value
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot parse memory size {value!r}: expected a number and an optional unit, "
            "e.g. '16GB', '512MiB', '1.5G' or '1073741824'; units: B, KB, MB, GB, TB "
            "(decimal), KiB, MiB, GiB, TiB and K, M, G, T (binary)."
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(num: float) -> str:
    """Format a byte count with a binary unit, e.g. ``format_bytes(3 * 2**20) == "3.0 MiB"``."""
    size = float(num)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


# ------------------------------------------------------------------------ byte counting


def _storage_key(t: torch.Tensor) -> tuple[tuple[str, int], int] | None:
    """``((device, storage pointer), storage bytes)`` of a dense tensor, else ``None``."""
    try:
        storage = t.untyped_storage()
        return (str(t.device), storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, mkldnn, wrapper tensors
        return None


def _storages(tensors: Iterable[torch.Tensor]) -> set[tuple[str, int]]:
    keys = set()
    for t in tensors:
        key = _storage_key(t)
        if key is not None:
            keys.add(key[0])
    return keys


class _Held:
    """A tensor saved for backward, counted while the autograd graph holds it."""

    __slots__ = ("__weakref__", "key", "meter", "tensor")

    def __init__(self, meter: SavedBytesMeter, tensor: torch.Tensor, key: Any) -> None:
        self.meter = meter
        self.tensor = tensor
        self.key = key

    def __del__(self) -> None:
        self.meter._release(self.key)


class _StorageCounts:
    """Live and peak bytes of storages, each counted once however many tensors hold it.

    :meth:`_hold` adds a reference to a storage (its bytes count from the first), and
    :meth:`_release` drops one (its bytes stop counting with the last).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.live = 0
        self.peak = 0
        self._excluded = _storages(exclude)
        self._count: dict[Any, list[int]] = {}  # key -> [references, bytes]

    def _hold(self, key: Any, nbytes: int) -> None:
        entry = self._count.get(key)
        if entry is None:
            self._count[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1

    def _release(self, key: Any) -> None:
        entry = self._count.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._count[key]
            self.live -= entry[1]


class SavedBytesMeter(_StorageCounts):
    """Live and peak bytes that autograd saves for backward, each storage counted once.

    A context manager over :func:`torch.autograd.graph.saved_tensors_hooks`. A tensor saved
    several times, or several views of one storage, count once (the storage's size); storages
    of ``exclude`` (e.g. the parameters, which exist anyway) do not count, nor do autocast's
    cached fp16/bf16 copies of them (one per parameter for the whole autocast region).

    Note that non-reentrant :func:`torch.utils.checkpoint.checkpoint` saves through its own
    hooks, so inside a checkpointed region the meter sees only the inputs it keeps.

    Args:
        exclude: Tensors whose storages are not counted, e.g.
            ``[*model.parameters(), *model.buffers()]``.

    Example:
        >>> x = torch.randn(1000, requires_grad=True)
        >>> with SavedBytesMeter() as meter:
        ...     y = (x * x).sum()              # mul saves x twice: one 4000-byte storage
        >>> meter.peak, meter.live
        (4000, 4000)
        >>> del y
        >>> meter.live
        0
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__(exclude)
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak = self.live

    def _pack(self, t: torch.Tensor) -> Any:
        found = _storage_key(t)
        if found is None:
            key: Any = ("tensor", id(t))
            nbytes = t.numel() * t.element_size()
        else:
            key, nbytes = found
            if key in self._excluded or nbytes == 0 or self._is_cast_of_excluded(t):
                return t
        self._hold(key, nbytes)
        return _Held(self, t, key)

    def _is_cast_of_excluded(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is (a view of) autocast's low-precision copy of an excluded parameter.

        Autocast caches one fp16/bf16 copy per trainable parameter for the whole autocast
        region, and every conv/linear saves it: counted per graph, each kept micro-batch (and
        every per-snippet cost) would carry the weights again, about ``weights / K`` per
        snippet. The copies are a fixed cost, like the parameters, so they do not count.
        """
        base = t._base if t._is_view() and t._base is not None else t
        fn = base.grad_fn
        if fn is None or fn.name() != "ToCopyBackward0" or not fn.next_functions:
            return False
        leaf = getattr(fn.next_functions[0][0], "variable", None)  # AccumulateGrad's parameter
        found = _storage_key(leaf) if isinstance(leaf, torch.Tensor) else None
        return found is not None and found[0] in self._excluded

    @staticmethod
    def _unpack(held: Any) -> torch.Tensor:
        return held.tensor if isinstance(held, _Held) else held

    def __enter__(self) -> SavedBytesMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None


class LiveBytesMeter(_StorageCounts, TorchDispatchMode):
    """Peak bytes of the storages that ops allocate while the mode is active.

    A storage counts from the op that first returns it until every tensor seen on it is
    garbage-collected; storages that existed before (``exclude``) never count.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        _StorageCounts.__init__(self, exclude)
        TorchDispatchMode.__init__(self)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        found = _storage_key(t)
        if found is None or found[0] in self._excluded or found[1] == 0:
            return
        key, nbytes = found
        self._hold(key, nbytes)
        weakref.finalize(t, self._release, key)


class DeviceBytesMeter(LiveBytesMeter):
    """:class:`LiveBytesMeter`, and on CUDA also what the caching allocator saw (F9).

    Op outputs alone miss cuDNN's workspace and the allocator's rounding, so on a CUDA
    ``device`` :attr:`peak` is also at least the growth of ``max_memory_allocated`` over the
    allocation at entry (when the block raised the device's peak; an earlier, higher peak hides
    the block's own) and the growth of ``memory_reserved`` (blocks the allocator had to add).
    It never resets the device's peak statistics (a user's peak reading stays intact).

    Args:
        exclude: As for :class:`LiveBytesMeter`.
        device: Where the measured ops run; only a CUDA device reads the allocator.
    """

    def __init__(
        self, exclude: Iterable[torch.Tensor] = (), *, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__(exclude)
        self.device = torch.device(device)
        self._entry: tuple[int, int, int] | None = None

    def __enter__(self) -> DeviceBytesMeter:
        if self.device.type == "cuda":
            dev = self.device
            self._entry = (torch.cuda.memory_allocated(dev), torch.cuda.max_memory_allocated(dev),
                           torch.cuda.memory_reserved(dev))  # fmt: skip
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self._entry is not None:
            allocated, peak, reserved = self._entry
            new_peak = torch.cuda.max_memory_allocated(self.device)
            grown = new_peak - allocated if new_peak > peak else 0
            added = torch.cuda.memory_reserved(self.device) - reserved
            self.peak = max(self.peak, grown, added)
            self._entry = None


# ---------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class SnippetCost:
    """What one snippet costs an encoder, measured by :func:`measure_snippet_cost`.

    Byte and time fields ending in "per snippet" are the measured micro-batch's totals divided
    by its size; the model of :func:`predict` scales them linearly.

    Attributes:
        snippet_shape: Shape of one snippet, ``(3, L, H, W)`` for this library's encoders.
        micro_batch_size: Snippets in the measured micro-batch.
        device: Device the measurement ran on.
        input_bytes: Bytes of one input snippet.
        feature_bytes: Bytes of one snippet's feature (``C`` values).
        saved_bytes: Bytes saved for backward per snippet (activations; unique storages,
            parameters excluded).
        nograd_peak_bytes: Peak bytes allocated during a no-grad forward, per snippet (the
            transient activations of phase 1; input excluded).
        train_peak_bytes: Peak bytes allocated during a forward with grad plus its backward, per
            snippet, saved activations included (CUDA only, from
            :func:`torch.cuda.max_memory_allocated`; ``None`` elsewhere).
        fwd_nograd_s: Seconds per snippet of a forward without grad.
        fwd_grad_s: Seconds per snippet of a forward with grad.
        bwd_s: Seconds per snippet of the backward of that forward.
        param_bytes: Bytes of all encoder parameters and buffers.
        grad_bytes: Bytes of the gradients of the trainable parameters.
        optimizer_bytes: Bytes of the optimiser state of the trainable parameters (AdamW: 2
            tensors per parameter).
    """

    snippet_shape: tuple[int, ...]
    micro_batch_size: int
    device: str
    input_bytes: int
    feature_bytes: int
    saved_bytes: float
    nograd_peak_bytes: float
    train_peak_bytes: float | None
    fwd_nograd_s: float
    fwd_grad_s: float
    bwd_s: float
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def fixed_bytes(self) -> int:
        """Bytes that do not depend on N or K: parameters, gradients, optimiser state."""
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes

    @property
    def workspace_bytes(self) -> float:
        """Transient bytes per snippet on top of the saved ones (w in the model).

        The no-grad forward's peak; on CUDA at least the measured training peak minus the saved
        bytes, which also covers the backward's gradient buffers.
        """
        if self.train_peak_bytes is None:
            return self.nograd_peak_bytes
        return max(self.nograd_peak_bytes, self.train_peak_bytes - self.saved_bytes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _features(encoder: nn.Module, x: torch.Tensor, pool: Pool | None) -> torch.Tensor:
    out = encoder(x)
    if pool is not None:
        out = pool(out)
    out = check_features(out, x.shape[0])
    return out


@contextmanager
def _isolated(encoder: nn.Module, device: torch.device) -> Iterator[None]:
    """Leave the encoder's buffers, ``.grad`` and the global RNG states as they were."""
    buffers = [(b, b.detach().clone()) for b in encoder.buffers()]
    grads = [(p, p.grad) for p in encoder.parameters()]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g


def check_probe_args(
    encoder: object, snippet_shape: Sequence[int], *, micro_batch_size: object, repeats: object
) -> tuple[int, ...]:
    """Refuse what a probe of ``encoder`` cannot run with; return the snippet shape as ints."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
    shape = tuple(int(s) for s in snippet_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"snippet_shape must be a non-empty sequence of positive ints, e.g. (3, 8, 112, "
            f"112) for [C, L, H, W]; got {tuple(snippet_shape)!r}."
        )
    for name, value in (("micro_batch_size", micro_batch_size), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return shape


def measure_snippet_cost(
    encoder: nn.Module,
    snippet_shape: Sequence[int],
    *,
    micro_batch_size: int = 2,
    device: torch.device | str | None = None,
    pool: Pool | None = None,
    dtype: torch.dtype = torch.float32,
    repeats: int = 2,
    optimizer_states: int = 2,
) -> SnippetCost:
    """Measure the memory and time of one micro-batch of random snippets through ``encoder``.

    It runs one forward with grad and its backward (counting saved bytes), one no-grad forward
    under a dispatch mode that tracks the peak of live allocations, then ``1 + repeats`` rounds
    of no-grad forward, forward with grad and backward, the first untimed (warm-up). It needs no
    trainer or data and leaves no trace: ``.grad``, buffers (BatchNorm running statistics) and
    the global random states are restored, and the backward goes only to the trainable
    parameters. On CUDA it resets the device's peak memory statistics
    (:func:`torch.cuda.reset_peak_memory_stats`) to read them.

    Args:
        encoder: Maps snippets ``[M, *snippet_shape]`` to features ``[M, C]`` (after ``pool``).
            Its mode (train/eval) is used as it is.
        snippet_shape: Shape of one snippet; ``(3, L, H, W)`` (channels before frames) for
            the encoders of :mod:`sgs_tad.encoders`.
        micro_batch_size: Snippets in the measured micro-batch (the engine's K is a good
            choice: per-snippet costs are most accurate at the size they are used at).
        device: Where the snippets are created; default the encoder's device (CPU if it has
            no parameters). Must be the encoder's device.
        pool: Optional callable applied to the encoder output, as in
            :class:`~sgs_tad.SequentializedGradientSampler`.
        dtype: Floating-point dtype of the random input snippets. For mixed precision, call
            this inside your ``torch.autocast`` block.
        repeats: Timed rounds after one untimed round; each time is the minimum over them.
        optimizer_states: Optimiser state tensors per trainable parameter (AdamW and Adam: 2,
            SGD with momentum: 1).

    Returns:
        The per-snippet costs.

    Raises:
        ValueError: A bad argument, or an encoder output that is not ``[M, C]``.
    """
    shape = check_probe_args(
        encoder, snippet_shape, micro_batch_size=micro_batch_size, repeats=repeats
    )
    if isinstance(optimizer_states, bool) or not isinstance(optimizer_states, int):
        raise ValueError(f"optimizer_states must be an int >= 0, got {optimizer_states!r}.")
    if optimizer_states < 0:
        raise ValueError(f"optimizer_states must be an int >= 0, got {optimizer_states!r}.")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}.")
    params = list(encoder.parameters())
    home = params[0].device if params else torch.device("cpu")
    dev = torch.device(device) if device is not None else home
    if params:
        if dev.type != home.type or dev.index not in (None, home.index):
            raise ValueError(
                f"device={str(dev)!r} but the encoder's parameters are on {home}; move the "
                f"encoder first (encoder.to({str(dev)!r})) or pass device={str(home)!r}."
            )
        dev = home
    trainable = [p for p in params if p.requires_grad]
    state = [*params, *encoder.buffers()]
    param_bytes = sum(t.numel() * t.element_size() for t in state)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    m = micro_batch_size
    cuda = dev.type == "cuda"

    with _isolated(encoder, dev):
        x = torch.randn((m, *shape), device=dev, dtype=dtype)
        for p in trainable:  # accumulate in place: the backward's peak holds no new grad buffer
            p.grad = torch.zeros_like(p)

        def backward(out: torch.Tensor) -> None:
            if out.requires_grad and trainable:
                torch.autograd.backward(out, torch.ones_like(out), inputs=trainable)

        # 1. Forward with grad and backward: saved bytes (also the warm-up).
        #    The input counts when the first layer saves it, as the gathered micro-batch of a
        #    real run does.
        with torch.enable_grad(), SavedBytesMeter(exclude=state) as meter:
            out = _features(encoder, x, pool)
        feature_bytes = out.shape[1] * out.element_size()
        saved_total = meter.peak
        backward(out)
        del out

        # 2. No-grad forward under the allocation tracker: the transient peak.
        with torch.no_grad(), LiveBytesMeter(exclude=[*state, x]) as live:
            _features(encoder, x, pool)
        nograd_peak = float(live.peak)

        # 3. Timed rounds (and, on CUDA, allocator peaks), after an untimed one: the first
        #    calls of a process pay for kernel selection and thread pools.
        t_fn, t_fg, t_b = math.inf, math.inf, math.inf
        cuda_nograd, cuda_train = 0.0, 0.0
        for i in range(repeats + 1):
            if cuda:
                _sync(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            with torch.no_grad():
                _features(encoder, x, pool)
            _sync(dev)
            if i > 0:
                t_fn = min(t_fn, time.perf_counter() - t0)
            if cuda:
                cuda_nograd = max(cuda_nograd, torch.cuda.max_memory_allocated(dev) - base)
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            with torch.enable_grad():
                out = _features(encoder, x, pool)
            _sync(dev)
            t1 = time.perf_counter()
            backward(out)
            del out
            _sync(dev)
            t2 = time.perf_counter()
            if i == 0:
                continue
            t_fg, t_b = min(t_fg, t1 - t0), min(t_b, t2 - t1)
            if cuda:
                cuda_train = max(cuda_train, torch.cuda.max_memory_allocated(dev) - base)

    if cuda:
        nograd_peak = max(nograd_peak, cuda_nograd)
    return SnippetCost(
        snippet_shape=shape,
        micro_batch_size=m,
        device=str(dev),
        input_bytes=math.prod(shape) * x.element_size(),
        feature_bytes=int(feature_bytes),
        saved_bytes=saved_total / m,
        nograd_peak_bytes=nograd_peak / m,
        train_peak_bytes=cuda_train / m if cuda else None,
        fwd_nograd_s=t_fn / m,
        fwd_grad_s=t_fg / m,
        bwd_s=t_b / m,
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_states * grad_bytes,
    )
