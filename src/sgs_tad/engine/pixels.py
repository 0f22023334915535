"""Pixels on their way to the encoder: ``uint8`` snippets, their normalisation, pinned buffers.

Snippet sources may deliver ``uint8`` pixels ``[n, 3, L, H, W]`` (a quarter of the bytes of
``float32``, through the decode cache, DataLoader workers and the host-to-device copy).
Normalisation is then an explicit step on the device, owned by the encoder
(:meth:`~sgs_tad.encoders.VideoEncoder.normalise_input`): :func:`normalise_pixels` is that step,
and the float path of :class:`~sgs_tad.data.MediaSnippetSource` runs the very same function on the
CPU, so both paths give the same values to the last bit.

Example:
    >>> import torch
    >>> x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2, 1, 1).expand(1, 3, 2, 1, 1)
    >>> normalise_pixels(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).flatten().tolist()
    [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_normalisation",
    "normalise_pixels",
    "pin_if_cuda",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def check_normalisation(mean: Sequence[float], std: Sequence[float]) -> None:
    """Refuse normalisation constants that would make snippets non-finite.

    Raises:
        ValueError: unless ``mean`` and ``std`` are 3 finite numbers each and every ``std``
            is > 0 (a zero ``std`` divides by zero: inf/NaN snippets).
    """
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ValueError(f"mean and std need 3 values (RGB); got {mean!r}, {std!r}.")
    if not all(math.isfinite(m) for m in mean_t) or not all(
        math.isfinite(s) and s > 0 for s in std_t
    ):
        raise ValueError(
            f"mean must be finite and std finite and > 0 (snippets are (x - mean) / std); got "
            f"mean={list(mean_t)}, std={list(std_t)}. Pass e.g. the ImageNet statistics."
        )


def _stats(
    values: Sequence[float] | torch.Tensor, ndim: int, device: torch.device
) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32)
    return t.to(device).view(1, 3, *([1] * (ndim - 2)))


def normalise_pixels(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """``uint8`` pixels ``[M, 3, ...]`` to ``float32`` ``(x / 255 - mean) / std``, on x's device.

    Args:
        x: ``uint8`` pixels, channels in dimension 1 (``[M, 3, L, H, W]`` or ``[M, 3, H, W]``).
        mean: Per-channel mean of pixels scaled to ``[0, 1]`` (3 values, or a tensor already on
            ``x``'s device shaped to broadcast).
        std: Per-channel standard deviation (3 values > 0, or such a tensor).

    Returns:
        A new ``float32`` tensor of ``x``'s shape.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"normalise_pixels expects uint8 pixels; got {x.dtype}.")
    m = mean if isinstance(mean, torch.Tensor) else _stats(mean, x.dim(), x.device)
    s = std if isinstance(std, torch.Tensor) else _stats(std, x.dim(), x.device)
    # One float copy, then in place: the float32 tensor is the only new allocation.
    return x.float().div_(255.0).sub_(m).div_(s)


def pin_if_cuda(x: torch.Tensor) -> torch.Tensor:
    """``x`` in page-locked (pinned) memory when CUDA is available, else ``x`` unchanged.

    A ``non_blocking=True`` copy to the GPU from pinned memory is truly asynchronous; from
    ordinary (pageable) memory CUDA stages it through a pinned bounce buffer synchronously.
    Call it where the copy is prepared (the SGS prefetch thread runs the sources'
    ``get_snippets``), and let the consumer issue ``x.to(device, non_blocking=True)`` on its
    own stream: the copy is then ordered before the consumer's kernels, whatever stream the
    consumer is on, and PyTorch's pinned-memory allocator records an event on that stream so
    the buffer is not reused before the copy has finished.
    """
    if x.device.type != "cpu" or not torch.cuda.is_available() or x.is_pinned():
        return x
    return x.pin_memory()
