"""The engine's configuration checks and the checks it runs while training.

:func:`check_options` validates :class:`~sgs_tad.SequentializedGradientSampler`'s options,
:func:`check_norm` refuses BatchNorm layers that would mix snippets, and :func:`check_same`
is the determinism check of phase 3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from sgs_tad.engine.memory import parse_bytes
from sgs_tad.engine.norm import training_batchnorms
from sgs_tad.samplers import make_sampler

__all__ = [
    "NO_GRAD_FEATURES_MESSAGE",
    "DeterminismCheck",
    "check_norm",
    "check_options",
    "check_same",
    "determinism_tolerance",
    "resolve_sampler",
]

SamplerFn = Callable[..., torch.Tensor]

NO_GRAD_FEATURES_MESSAGE = (
    "the detector's backward left no gradient on the encoder features (feats.grad is None),"
    " so the encoder would silently never train. The detector step cut the graph between the"
    " features and the loss: a .detach()/.data, a numpy round trip, or padding/batching under"
    " torch.no_grad. ActionFormer does the latter: its PtTransformer.preprocessing pads the"
    " batch under @torch.no_grad(); replace it on your model by an out-of-place padding that"
    " keeps the graph (examples/actionformer_e2e.py, docs/guide.md; sgs_tad.training.adapters."
    "enable_grad suffices for detectors whose no_grad method works out of place). If a frozen"
    " encoder is intended, pass ratio=0."
)


def check_options(
    encoder: nn.Module,
    *,
    micro_batch_size: int | Literal["auto"],
    memory_budget: int | str | None,
    encode_batch_size: int | Literal["auto"] | None,
    prefetch: bool | Literal["auto"],
    ratio: float,
    pool: Any,
    grad_scale: str,
    norm_policy: str,
    on_nonfinite_grad: str,
) -> int | None:
    """Validate the options of :class:`~sgs_tad.SequentializedGradientSampler`.

    Returns:
        ``memory_budget`` in bytes, or None.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
    budget: int | None = None
    if memory_budget is not None:
        budget = parse_bytes(memory_budget)
        if budget <= 0:
            raise ValueError(f"memory_budget must be > 0 bytes; got {memory_budget!r}.")
    if micro_batch_size == "auto":
        if budget is None:
            raise ValueError(
                "micro_batch_size='auto' chooses K from a memory budget: pass "
                "memory_budget='2GB' (the bytes one micro-batch's encoder activations may "
                "take), or an int micro_batch_size."
            )
    elif isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int):
        raise TypeError(
            f"micro_batch_size must be an int >= 1, got {micro_batch_size!r} "
            f"({type(micro_batch_size).__name__})."
        )
    elif micro_batch_size < 1:
        raise ValueError(
            f"micro_batch_size must be >= 1 (snippets per encoder call), got "
            f"{micro_batch_size}. Use 1 for the smallest memory, 4 as in the paper."
        )
    if (
        encode_batch_size is not None
        and encode_batch_size != "auto"
        and (
            isinstance(encode_batch_size, bool)
            or not isinstance(encode_batch_size, int)
            or encode_batch_size < 1
        )
    ):
        raise ValueError(
            f"encode_batch_size must be 'auto', None (= micro_batch_size) or an int >= 1, "
            f"got {encode_batch_size!r}. A no-grad forward keeps no activations: try 4-16x K."
        )
    if prefetch not in (True, False, "auto"):
        raise ValueError(f"prefetch must be True, False or 'auto'; got {prefetch!r}.")
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(
            f"ratio must be in [0, 1] (fraction of snippets back-propagated), got {ratio!r}. "
            "Use 0 for a frozen encoder, 1 for the exact end-to-end gradient, 0.3 as in "
            "the paper."
        )
    choices = {
        "grad_scale": (grad_scale, ("none", "unbiased")),
        "norm_policy": (norm_policy, ("error", "allow")),
        "on_nonfinite_grad": (on_nonfinite_grad, ("raise", "skip")),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")
    if pool is not None and not callable(pool):
        raise TypeError(f"pool must be callable or None, got {type(pool).__name__}.")
    return budget


def resolve_sampler(sampler: str | SamplerFn) -> SamplerFn:
    if isinstance(sampler, str):
        return make_sampler(sampler)
    if not callable(sampler):
        raise TypeError(
            f"sampler must be a name (e.g. 'random') or a callable "
            f"sampler(num_items, num_samples, *, features=None, generator=None); got "
            f"{type(sampler).__name__}."
        )
    return sampler


def check_norm(encoder: nn.Module) -> None:
    """Refuse BatchNorm layers in training mode (they mix snippets; see docs/transparency.md)."""
    names = training_batchnorms(encoder)
    if names:
        raise ValueError(
            f"the encoder has BatchNorm layers in training mode: {names[:5]}"
            f"{' …' if len(names) > 5 else ''}. Their output mixes the snippets of a "
            "micro-batch and every call updates running statistics, so SGS gradients would "
            "not be exact. Fix: encoder = sgs_tad.freeze_norm_layers(encoder) (as the paper "
            "does), or put them in eval mode, or pass norm_policy='allow' to accept it."
        )


def determinism_tolerance(
    dtype: torch.dtype, device: torch.device, *, autocast: bool = False
) -> tuple[float, float]:
    """``(rtol, atol)`` of the determinism check for features computed in this precision.

    Phase 3 recomputes at K snippets per call what phase 1 may have computed in larger calls,
    and kernels (cuDNN above all) pick their algorithm per batch shape, so the two agree only
    to the precision actually used:

    * fp16/bf16 features, or autocast to them: ``(1e-2, 1e-2)``;
    * fp32 on CUDA with TF32 allowed (``torch.backends.cuda.matmul.allow_tf32``,
      ``torch.backends.cudnn.allow_tf32`` -- on by default -- or a float32 matmul precision
      other than ``"highest"``): ``(1e-2, 1e-5)``, TF32 rounds to 10 mantissa bits, the
      tolerance of the independence check;
    * plain fp32: ``(1e-4, 1e-5)``;
    * float64: ``(1e-8, 1e-10)``.

    Example:
        >>> determinism_tolerance(torch.float32, torch.device("cpu"))
        (0.0001, 1e-05)
    """
    if autocast or dtype in (torch.float16, torch.bfloat16):
        return 1e-2, 1e-2
    if dtype == torch.float64:
        return 1e-8, 1e-10
    if device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32
        or torch.backends.cudnn.allow_tf32
        or torch.get_float32_matmul_precision() != "highest"
    ):
        return 1e-2, 1e-5
    return 1e-4, 1e-5


class DeterminismCheck:
    """The determinism check of phase 3, reduced on the device and read once per step.

    :meth:`add` compares one micro-batch's recomputed features with phase 1's without reading
    anything back (``torch.allclose`` would sync the host with the device every micro-batch);
    :meth:`raise_if_failed` reads the accumulated flag once and raises the error of
    :func:`check_same`. An error is therefore raised at the end of phase 3, after the
    encoder's ``.grad`` has accumulated the whole batch: zero it before training on.

    Args:
        autocast: phase 3 ran under autocast to fp16/bf16 (looser tolerance).
    """

    def __init__(self, *, autocast: bool = False) -> None:
        self.autocast = autocast
        self._failed: torch.Tensor | None = None
        self._diff: torch.Tensor | None = None
        self._tolerance: tuple[float, float] | None = None

    def add(self, recomputed: torch.Tensor, original: torch.Tensor) -> None:
        """Compare ``recomputed`` ``[m, C]`` with ``original`` (phase 1), on their device."""
        if recomputed.shape != original.shape:
            _fail(recomputed, original, float("nan"), None)
        rtol, atol = determinism_tolerance(
            recomputed.dtype, recomputed.device, autocast=self.autocast
        )
        self._tolerance = (rtol, atol)
        a, b = recomputed.to(original.dtype), original
        diff = (a - b).abs()
        # allclose's test, NaN included (a NaN is never close): not (|a - b| <= atol + rtol |b|)
        failed = (~(diff <= atol + rtol * b.abs())).any()
        worst = (recomputed.float() - original.float()).abs().amax() if diff.numel() else None
        self._failed = failed if self._failed is None else self._failed | failed
        if worst is not None:
            self._diff = worst if self._diff is None else torch.maximum(self._diff, worst)

    def raise_if_failed(self) -> None:
        """Read the flag (one host sync) and raise if some micro-batch differed."""
        if self._failed is None:
            return
        failed, diff = (self._failed, self._diff)
        self._failed = self._diff = None
        values = torch.stack(
            (failed.float(), diff.float() if diff is not None else failed.float() * 0)
        )
        flag, worst = values.tolist()
        if flag:
            _fail(None, None, worst, self._tolerance)


def check_same(recomputed: torch.Tensor, original: torch.Tensor) -> None:
    """The determinism check: phase 3's recomputed features against phase 1's."""
    check = DeterminismCheck()
    check.add(recomputed, original)
    check.raise_if_failed()


def _fail(
    recomputed: torch.Tensor | None,
    original: torch.Tensor | None,
    diff: float,
    tolerance: tuple[float, float] | None,
) -> None:
    if recomputed is not None and original is not None:
        what = (f"have shape {tuple(recomputed.shape)} where the phase-1 features have "
                f"{tuple(original.shape)}")  # fmt: skip
    else:
        what = f"differ from the phase-1 features by up to {diff:.3g}"
        if tolerance is not None:
            what += f" (allowed: rtol={tolerance[0]:g}, atol={tolerance[1]:g})"
    raise RuntimeError(
        f"determinism check failed: the recomputed features {what}. The encoder is not a pure "
        "function of the snippet: likely causes are a BatchNorm in training mode (use "
        "sgs_tad.freeze_norm_layers), randomness outside torch (Python random, numpy) "
        "or with a feature-guided sampler (its recompute cannot replay dropout), "
        "in-place state updated by forward, or a lazy source that decodes different "
        "values on a second call. Fix the cause, or pass determinism_check=False if "
        "the difference is intended."
    )
