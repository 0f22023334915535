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
    "check_norm",
    "check_options",
    "check_same",
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


def check_same(recomputed: torch.Tensor, original: torch.Tensor) -> None:
    """The determinism check: phase 3's recomputed features against phase 1's."""
    if recomputed.dtype in (torch.float16, torch.bfloat16):
        rtol, atol = 1e-2, 1e-2
    else:
        rtol, atol = 1e-4, 1e-5
    if recomputed.shape != original.shape or not torch.allclose(
        recomputed.to(original.dtype), original, rtol=rtol, atol=atol
    ):
        diff = (recomputed.float() - original.float()).abs().max().item()
        raise RuntimeError(
            f"determinism check failed: the recomputed features differ from the phase-1 "
            f"features by up to {diff:.3g}. The encoder is not a pure function of the "
            "snippet: likely causes are a BatchNorm in training mode (use "
            "sgs_tad.freeze_norm_layers), randomness outside torch (Python random, numpy) "
            "or with a feature-guided sampler (its recompute cannot replay dropout), "
            "in-place state updated by forward, or a lazy source that decodes different "
            "values on a second call. Fix the cause, or pass determinism_check=False if "
            "the difference is intended."
        )
