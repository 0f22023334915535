"""Memory and time planner: measure one micro-batch of an encoder, predict N, K and γ.

:func:`measure_snippet_cost` runs one micro-batch of snippets through an encoder and returns a
:class:`SnippetCost`: what one snippet costs in bytes saved for backward, in transient
(workspace) bytes and in forward/backward time, plus the fixed bytes of the parameters, their
gradients and the optimiser state. :func:`predict` turns that into the peak memory and the time
per video of naive end-to-end training, temporal checkpointing and SGS, and :func:`recommend`
picks the largest micro-batch K that fits a memory budget and the largest ratio γ that fits a
time budget.

The model (per video of N snippets; s = saved bytes per snippet, w = workspace per snippet,
x = input bytes per snippet, f = feature bytes per snippet, P = fixed bytes, n = sampled
snippets, m = min(K, n)):

========== ================================================ ===========================
method     peak memory                                      time
========== ================================================ ===========================
naive      P + 2Nf + N·s + N·w                              N·(t_fg + t_b)
checkpoint P + 2Nf + N·x + K·(s + w)                        N·(t_fn + t_fg + t_b)
sgs        P + 2Nf + max(K·w, m·(s + w))                    N·t_fn + n·(t_fg + t_b)
========== ================================================ ===========================

with t_fn, t_fg, t_b the per-snippet times of a no-grad forward, a forward with grad and a
backward. ``docs/plan.md`` explains each term and compares predictions with measured runs.

From the command line::

    python -m sgs_tad.plan --encoder small3d --snippet-shape 3,8,64,64 --n 16,32 \\
        --k 1,4 --ratio 0.3,1.0 --budget 2GB --time-budget 1.5

Example:
    >>> import torch
    >>> from torch import nn
    >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> cost = measure_snippet_cost(enc, (3, 4), micro_batch_size=2)
    >>> cost.input_bytes, cost.feature_bytes
    (48, 16)
    >>> sgs = predict(cost, n=64, k=4, ratio=0.5, method="sgs")
    >>> naive = predict(cost, n=64, method="naive")
    >>> sgs.saved_bytes < naive.saved_bytes
    True
    >>> parse_bytes("1.5GiB")
    1610612736
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .microbatch import check_features, num_sampled

__all__ = [
    "METHODS",
    "LiveBytesMeter",
    "Method",
    "Prediction",
    "Recommendation",
    "RunMeasurement",
    "SavedBytesMeter",
    "SnippetCost",
    "format_bytes",
    "main",
    "measure_run",
    "measure_snippet_cost",
    "parse_bytes",
    "predict",
    "recommend",
]

Method = Literal["naive", "checkpoint", "sgs"]
"""A training method: naive end to end, temporal checkpointing, or SGS."""

METHODS: tuple[Method, ...] = ("naive", "checkpoint", "sgs")
"""The training methods :func:`predict` models, in table order."""

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


class SavedBytesMeter:
    """Live and peak bytes that autograd saves for backward, each storage counted once.

    A context manager over :func:`torch.autograd.graph.saved_tensors_hooks`. A tensor saved
    several times, or several views of one storage, count once (the storage's size); storages
    of ``exclude`` (e.g. the parameters, which exist anyway) do not count.

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
        self.live = 0
        self.peak = 0
        self._excluded = _storages(exclude)
        self._count: dict[Any, list[int]] = {}  # key -> [references, bytes]
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
            if key in self._excluded or nbytes == 0:
                return t
        entry = self._count.get(key)
        if entry is None:
            self._count[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        return _Held(self, t, key)

    @staticmethod
    def _unpack(held: Any) -> torch.Tensor:
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, key: Any) -> None:
        entry = self._count.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._count[key]
            self.live -= entry[1]

    def __enter__(self) -> SavedBytesMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None


class LiveBytesMeter(TorchDispatchMode):
    """Peak bytes of the storages that ops allocate while the mode is active.

    A storage counts from the op that first returns it until every tensor seen on it is
    garbage-collected; storages that existed before (``exclude``) never count.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._excluded = _storages(exclude)
        self._count: dict[tuple[str, int], list[int]] = {}

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
        entry = self._count.get(key)
        if entry is None:
            self._count[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: tuple[str, int]) -> None:
        entry = self._count.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._count[key]
            self.live -= entry[1]


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
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
    shape = tuple(int(s) for s in snippet_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"snippet_shape must be a non-empty sequence of positive ints, e.g. (3, 8, 112, "
            f"112) for [C, L, H, W]; got {tuple(snippet_shape)!r}."
        )
    for name, value, low in (
        ("micro_batch_size", micro_batch_size, 1),
        ("repeats", repeats, 1),
        ("optimizer_states", optimizer_states, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
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


# ----------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Prediction:
    """Predicted peak memory and time of one training step on one video of N snippets.

    ``peak_bytes = fixed_bytes + feature_bytes + saved_bytes + workspace_bytes``; see the
    module docstring and ``docs/plan.md`` for each method's terms.

    Attributes:
        method: ``"naive"``, ``"checkpoint"`` or ``"sgs"``.
        n: Snippets in the video, N.
        k: Snippets per encoder call with grad (K, capped at N); ``None`` for naive.
        ratio: γ (SGS); 1.0 for the other methods.
        sampled: Snippets whose gradient reaches the encoder (N except for SGS).
        saved_bytes: Bytes held for backward at the peak (activations; checkpoint: the kept
            inputs plus one recomputed micro-batch).
        workspace_bytes: Transient bytes at the peak on top of the saved ones.
        feature_bytes: The features ``[N, C]`` and their gradient.
        fixed_bytes: Parameters, gradients and optimiser state.
        peak_bytes: The predicted peak.
        time_s: Predicted encoder time of the step (forwards and backwards), in seconds.
    """

    method: Method
    n: int
    k: int | None
    ratio: float
    sampled: int
    saved_bytes: float
    workspace_bytes: float
    feature_bytes: float
    fixed_bytes: int
    peak_bytes: float
    time_s: float


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def predict(
    cost: SnippetCost,
    *,
    n: int,
    k: int | None = None,
    ratio: float = 1.0,
    method: Method = "sgs",
) -> Prediction:
    """Predict the peak memory and the encoder time of one video of ``n`` snippets.

    With s, w, x, f the saved, workspace, input and feature bytes per snippet of ``cost``, P its
    fixed bytes, t_fn, t_fg, t_b its per-snippet times, n_s = :func:`~sgs_tad.microbatch.
    num_sampled` (N, γ) and m = min(K, n_s):

    * naive: peak = P + 2Nf + N·s + N·w; time = N·(t_fg + t_b).
    * checkpoint: peak = P + 2Nf + N·x + K·(s + w) (the kept inputs, and one micro-batch
      recomputed during the backward); time = N·(t_fn + t_fg + t_b).
    * sgs: peak = P + 2Nf + max(K·w, m·(s + w)) (phase 1 or one phase-3 micro-batch); time =
      N·t_fn + n_s·(t_fg + t_b).

    The input batch held by the data loader and the detector's own memory are not included.

    Args:
        cost: Per-snippet costs from :func:`measure_snippet_cost`.
        n: Snippets per video, N.
        k: Micro-batch size K (required for "checkpoint" and "sgs", ignored for "naive");
            values above N are capped at N.
        ratio: γ ∈ [0, 1] for "sgs" (ignored by the other methods).
        method: "naive", "checkpoint" or "sgs".

    Returns:
        The prediction.
    """
    n = _positive_int("n", n)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    if method == "naive":
        kk: int | None = None
    else:
        if k is None:
            raise ValueError(f"method={method!r} needs k, the micro-batch size (e.g. k=4).")
        kk = min(_positive_int("k", k), n)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}.")
    s, w, x = cost.saved_bytes, cost.workspace_bytes, cost.input_bytes
    features = 2.0 * n * cost.feature_bytes
    step = cost.fwd_grad_s + cost.bwd_s
    if method == "naive":
        sampled, gamma = n, 1.0
        saved, work = n * s, n * w
        seconds = n * step
    elif method == "checkpoint":
        assert kk is not None
        sampled, gamma = n, 1.0
        saved, work = n * x + kk * s, kk * w
        seconds = n * (cost.fwd_nograd_s + step)
    else:
        assert kk is not None
        sampled, gamma = num_sampled(n, float(ratio)), float(ratio)
        m = min(kk, sampled)
        # Phase 1 (K snippets without a graph) or one phase-3 micro-batch, whichever is larger.
        saved = m * s
        work = max(kk * w, m * (s + w)) - saved
        seconds = n * cost.fwd_nograd_s + sampled * step
    return Prediction(
        method=method,
        n=n,
        k=kk,
        ratio=gamma,
        sampled=sampled,
        saved_bytes=saved,
        workspace_bytes=work,
        feature_bytes=features,
        fixed_bytes=cost.fixed_bytes,
        peak_bytes=cost.fixed_bytes + features + saved + work,
        time_s=seconds,
    )


@dataclass(frozen=True)
class Recommendation:
    """SGS settings for a memory (and time) budget, from :func:`recommend`.

    Attributes:
        k: The largest micro-batch size K (≤ N) whose peak fits the memory budget at γ = 1.
        ratio: The largest γ whose predicted time fits the time budget (1.0 without one).
        prediction: The SGS prediction at ``k`` and ``ratio``.
        naive_fits: Whether naive end-to-end training would fit the memory budget too.
        budget_bytes: The memory budget.
        time_budget_s: The time budget, if any.
    """

    k: int
    ratio: float
    prediction: Prediction
    naive_fits: bool
    budget_bytes: int
    time_budget_s: float | None


def recommend(
    cost: SnippetCost,
    *,
    n: int,
    budget_bytes: int | str,
    time_budget_s: float | None = None,
) -> Recommendation:
    """The largest K that fits ``budget_bytes`` and the largest γ that fits ``time_budget_s``.

    K is chosen at γ = 1 (the most memory any γ needs with that K), so every γ fits. γ is
    chosen among j/N, j = N … 1 (every distinct sample count).

    Args:
        cost: Per-snippet costs from :func:`measure_snippet_cost`.
        n: Snippets per video, N.
        budget_bytes: Memory for the encoder side of training: an int of bytes or a string for
            :func:`parse_bytes` (``"16GB"``). Leave out what the detector needs.
        time_budget_s: Seconds of encoder time per video; ``None``: γ = 1.

    Returns:
        The recommendation.

    Raises:
        ValueError: Not even one snippet per micro-batch fits the memory budget, or not even
            one sampled snippet fits the time budget; the message gives the measured costs.
    """
    n = _positive_int("n", n)
    budget = parse_bytes(budget_bytes)
    best: Prediction | None = None
    for k in range(n, 0, -1):
        pred = predict(cost, n=n, k=k, ratio=1.0, method="sgs")
        if pred.peak_bytes <= budget:
            best = pred
            break
    if best is None:
        one = predict(cost, n=n, k=1, ratio=1.0, method="sgs")
        raise ValueError(
            f"memory budget {format_bytes(budget)} ({budget} bytes) cannot fit SGS with one "
            f"snippet per micro-batch at N={n}: predicted {format_bytes(one.peak_bytes)} = "
            f"{format_bytes(cost.fixed_bytes)} fixed (parameters, gradients, optimiser state) "
            f"+ {format_bytes(cost.saved_bytes)} saved for backward per snippet + "
            f"{format_bytes(cost.workspace_bytes)} workspace per snippet + "
            f"{format_bytes(one.feature_bytes)} of features. Raise the budget, shorten or "
            "shrink the snippets, or freeze more of the encoder."
        )
    assert best.k is not None
    k = best.k
    if time_budget_s is None:
        chosen = best
    else:
        if (
            isinstance(time_budget_s, bool)
            or not isinstance(time_budget_s, (int, float))
            or time_budget_s <= 0
        ):
            raise ValueError(f"time_budget_s must be a number > 0 or None, got {time_budget_s!r}.")
        found: Prediction | None = None
        for j in range(n, 0, -1):
            pred = predict(cost, n=n, k=k, ratio=j / n, method="sgs")
            if pred.time_s <= time_budget_s:
                found = pred
                break
        if found is None:
            least = predict(cost, n=n, k=k, ratio=1 / n, method="sgs")
            raise ValueError(
                f"time budget {time_budget_s:g} s cannot fit SGS at N={n}: with one sampled "
                f"snippet it takes {least.time_s:.3g} s ({cost.fwd_nograd_s:.3g} s per snippet "
                f"for the no-grad forward of all {n}, {cost.fwd_grad_s + cost.bwd_s:.3g} s per "
                "sampled snippet for the forward and backward). Raise the time budget or lower N."
            )
        chosen = found
    naive = predict(cost, n=n, method="naive")
    return Recommendation(
        k=k,
        ratio=chosen.ratio,
        prediction=chosen,
        naive_fits=naive.peak_bytes <= budget,
        budget_bytes=budget,
        time_budget_s=None if time_budget_s is None else float(time_budget_s),
    )


# --------------------------------------------------------------------- measured real runs


@dataclass(frozen=True)
class RunMeasurement:
    """Saved bytes and time of real training steps, from :func:`measure_run`.

    Attributes:
        method: ``"naive"``, ``"checkpoint"`` or ``"sgs"``.
        n: Snippets in the video.
        k: Micro-batch size (``None`` for naive).
        ratio: γ for SGS, 1.0 otherwise.
        saved_bytes: Peak of the live bytes saved for backward during the step (unique
            storages, parameters excluded). Checkpointing recomputes inside its own hooks, so
            for it this is the kept inputs only.
        time_s: Wall time of one step (minimum over the timed repeats), the detector being a
            plain sum of the features.
    """

    method: Method
    n: int
    k: int | None
    ratio: float
    saved_bytes: int
    time_s: float


def measure_run(
    encoder: nn.Module,
    snippet_shape: Sequence[int],
    *,
    n: int,
    method: Method,
    k: int | None = None,
    ratio: float = 1.0,
    pool: Pool | None = None,
    dtype: torch.dtype = torch.float32,
    repeats: int = 1,
) -> RunMeasurement:
    """Run real training steps on one random video and measure them (to check predictions).

    Naive and checkpoint run :class:`~sgs_tad.EndToEnd`, SGS runs
    :class:`~sgs_tad.SequentializedGradientSampler` (``norm_policy="allow"``, no determinism
    check); the loss is the sum of the features. One untimed step measures the saved bytes,
    then ``repeats`` steps are timed. ``.grad``, buffers and random states are restored.

    Args:
        encoder: As for :func:`measure_snippet_cost` (on its target device).
        snippet_shape: Shape of one snippet.
        n: Snippets in the video.
        method: "naive", "checkpoint" or "sgs".
        k: Micro-batch size for "checkpoint" and "sgs".
        ratio: γ for "sgs".
        pool: Optional pooling of the encoder output.
        dtype: Dtype of the random snippets.
        repeats: Timed steps.

    Returns:
        The measurement.
    """
    from .engine import EndToEnd
    from .sgs import SequentializedGradientSampler

    n = _positive_int("n", n)
    repeats = _positive_int("repeats", repeats)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    if method != "naive" and k is None:
        raise ValueError(f"method={method!r} needs k, the micro-batch size (e.g. k=4).")
    params = list(encoder.parameters())
    dev = params[0].device if params else torch.device("cpu")
    state = [*params, *encoder.buffers()]
    engine: Any
    if method == "naive":
        engine = EndToEnd(encoder, pool=pool)
    elif method == "checkpoint":
        engine = EndToEnd(encoder, micro_batch_size=k, checkpoint=True, pool=pool)
    else:
        engine = SequentializedGradientSampler(
            encoder,
            micro_batch_size=_positive_int("k", k),
            ratio=ratio,
            pool=pool,
            norm_policy="allow",
            determinism_check=False,
        )

    with _isolated(encoder, dev):
        video = torch.randn((1, n, *snippet_shape), device=dev, dtype=dtype)

        def step() -> None:
            feats = engine.encode(video)
            feats.sum().backward()
            engine.backward(video, feats)
            for p in params:
                p.grad = None

        with SavedBytesMeter(exclude=[*state, video]) as meter:
            step()
        times = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            step()
            _sync(dev)
            times.append(time.perf_counter() - t0)
    return RunMeasurement(
        method=method,
        n=n,
        k=None if method == "naive" else min(int(k or n), n),
        ratio=float(ratio) if method == "sgs" else 1.0,
        saved_bytes=meter.peak,
        time_s=min(times),
    )


# ------------------------------------------------------------------------------------ CLI


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints such as 16,32,64, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive ints such as 16,32,64, got {text!r}")
    return values


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ratios in [0, 1] such as 0.3,1.0, got {text!r}"
        ) from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected ratios in [0, 1] such as 0.3,1.0, got {text!r}"
        )
    return values


def _budget(text: str) -> int:
    try:
        return parse_bytes(text)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _mib(num: float) -> str:
    return f"{num / 2**20:.2f}"


def _parser() -> argparse.ArgumentParser:
    from .encoders import ENCODERS

    parser = argparse.ArgumentParser(
        prog="python -m sgs_tad.plan",
        description="Predict peak memory and time of naive, checkpointed and SGS training from "
        "one measured micro-batch, and recommend K and γ for a budget.",
    )
    parser.add_argument("--encoder", required=True, choices=sorted(ENCODERS))
    parser.add_argument(
        "--snippet-shape",
        required=True,
        type=_ints,
        help="one snippet, C,L,H,W (channels before frames), e.g. 3,8,112,112",
    )
    parser.add_argument("--n", required=True, type=_ints, help="snippets per video, e.g. 16,32")
    parser.add_argument("--k", type=_ints, default=[1, 2, 4, 8], help="micro-batch sizes K")
    parser.add_argument("--ratio", type=_ratios, default=[0.3, 1.0], help="SGS ratios γ")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=_budget, help="memory budget, e.g. 16GB, 512MiB, 1.5G")
    parser.add_argument("--time-budget", type=float, help="encoder seconds per video")
    parser.add_argument(
        "--micro-batch-size", type=int, default=2, help="snippets in the measured micro-batch"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed measurement rounds")
    parser.add_argument(
        "--frozen-stages",
        type=int,
        help="apply sgs_tad.encoders.freeze_encoder (frozen BatchNorm, stages fixed) first",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also run every configuration for real and print measured saved bytes and time",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m sgs_tad.plan --encoder ... --snippet-shape ... --n ...``.

    Prints a markdown table of predictions (and, with ``--verify``, measurements) per method,
    N, K and γ, then the recommendation for each N when ``--budget`` is given.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    from .encoders import build_encoder, freeze_encoder

    parser = _parser()
    args = parser.parse_args(argv)
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    encoder = build_encoder(args.encoder)
    if args.frozen_stages is not None:
        encoder = freeze_encoder(encoder, frozen_stages=args.frozen_stages)
    encoder = encoder.to(args.device)
    cost = measure_snippet_cost(
        encoder,
        args.snippet_shape,
        micro_batch_size=args.micro_batch_size,
        device=args.device,
        repeats=args.repeats,
    )
    shape = ",".join(map(str, cost.snippet_shape))
    print(
        f"{args.encoder}, snippet {shape} on {cost.device}, measured on {cost.micro_batch_size} "
        f"snippets: saved {format_bytes(cost.saved_bytes)}/snippet, workspace "
        f"{format_bytes(cost.workspace_bytes)}/snippet, input {format_bytes(cost.input_bytes)}"
        f"/snippet, fixed {format_bytes(cost.fixed_bytes)} (parameters "
        f"{format_bytes(cost.param_bytes)}, gradients {format_bytes(cost.grad_bytes)}, AdamW "
        f"{format_bytes(cost.optimizer_bytes)}); per snippet: forward no-grad "
        f"{cost.fwd_nograd_s * 1e3:.1f} ms, forward {cost.fwd_grad_s * 1e3:.1f} ms, backward "
        f"{cost.bwd_s * 1e3:.1f} ms\n"
    )
    header = "| N | method | K | γ | saved MiB | peak MiB | time s |"
    rule = "|---|---|---|---|---|---|---|"
    if args.verify:
        header += " measured saved MiB | measured time s |"
        rule += "---|---|"
    if args.budget is not None:
        header += " fits |"
        rule += "---|"
    print(header)
    print(rule)
    for n in args.n:
        configs: list[tuple[Method, int | None, float]] = [("naive", None, 1.0)]
        configs += [("checkpoint", k, 1.0) for k in args.k if k <= n]
        configs += [("sgs", k, r) for k in args.k if k <= n for r in args.ratio]
        for method, k, ratio in configs:
            p = predict(cost, n=n, k=k, ratio=ratio, method=method)
            row = (
                f"| {n} | {method} | {p.k if p.k is not None else '-'} | "
                f"{f'{p.ratio:g}' if method == 'sgs' else '-'} | {_mib(p.saved_bytes)} | "
                f"{_mib(p.peak_bytes)} | {p.time_s:.3f} |"
            )
            if args.verify:
                run = measure_run(
                    encoder,
                    args.snippet_shape,
                    n=n,
                    method=method,
                    k=k,
                    ratio=ratio,
                    repeats=args.repeats,
                )
                row += f" {_mib(run.saved_bytes)} | {run.time_s:.3f} |"
            if args.budget is not None:
                fits = p.peak_bytes <= args.budget and (
                    args.time_budget is None or p.time_s <= args.time_budget
                )
                row += f" {'yes' if fits else 'no'} |"
            print(row, flush=True)
    if args.budget is not None:
        print(
            f"\nRecommendation for a budget of {format_bytes(args.budget)}"
            + (f" and {args.time_budget:g} s per video" if args.time_budget is not None else "")
            + ":\n"
        )
        for n in args.n:
            try:
                rec = recommend(
                    cost, n=n, budget_bytes=args.budget, time_budget_s=args.time_budget
                )
            except ValueError as err:
                print(f"- N={n}: {err}")
                continue
            p = rec.prediction
            print(
                f"- N={n}: SGS with K={rec.k}, γ={rec.ratio:.3g} ({p.sampled} of {n} snippets): "
                f"peak {format_bytes(p.peak_bytes)}, {p.time_s:.3f} s per video"
                + ("; naive end to end fits too" if rec.naive_fits else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
