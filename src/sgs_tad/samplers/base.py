"""The sampler protocol and the input checks every sampler shares.

A sampler chooses ``num_samples`` distinct items out of ``num_items`` (snippets of a video, or
proposals of a proposal map). It is called as::

    indices = sampler(num_items, num_samples, features=None, generator=None)

and returns a sorted 1-D ``LongTensor`` of distinct indices in ``[0, num_items)``, on the CPU
(whatever the device of ``features``). Every random
choice is drawn from ``generator`` (a :class:`torch.Generator`); with ``generator=None`` the
sampler draws from torch's default generator, exactly like :func:`torch.randperm` does, so
``torch.manual_seed`` still makes a run reproducible. Given a generator, a sampler never touches
torch's global RNG.

A sampler with ``requires_features = True`` (FPS, k-DPP) needs ``features`` of shape
``[num_items, C]``; the SGS engine then draws the snippet sample after phase 1 and passes the
phase-1 features of that video. Feature-independent samplers ignore ``features``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Sampler", "check_features", "check_request", "random_seed"]


@runtime_checkable
class Sampler(Protocol):
    """What the engine and :func:`~sgs_tad.detection.proposals.sample_proposals` call.

    Attributes:
        requires_features: ``True`` when the sampler needs ``features`` ``[num_items, C]``.
    """

    requires_features: bool

    def __call__(
        self,
        num_items: int,
        num_samples: int,
        *,
        features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``num_samples`` sorted distinct indices in ``[0, num_items)``."""
        ...


def check_request(num_items: int, num_samples: int) -> None:
    """Raise if ``num_samples`` distinct items cannot be drawn from ``num_items``.

    Raises:
        TypeError: if either count is not an ``int``.
        ValueError: if ``num_items < 0`` or ``num_samples`` is outside ``[0, num_items]``.
    """
    for name, value in (("num_items", num_items), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}.")
    if not 0 <= num_samples <= num_items:
        raise ValueError(
            f"cannot draw num_samples={num_samples} distinct items out of "
            f"num_items={num_items}; choose 0 <= num_samples <= num_items "
            "(lower the ratio, or sample with a smaller k)."
        )


def check_features(features: torch.Tensor | None, num_items: int, who: str) -> torch.Tensor:
    """Validate the features of a feature-guided sampler.

    Args:
        features: ``[num_items, C]`` floating tensor, finite.
        num_items: expected number of rows.
        who: the sampler's name, for the error message.

    Returns:
        ``features`` detached (never part of an autograd graph).

    Raises:
        ValueError: if missing, of the wrong shape, or not finite.
        TypeError: if not a floating-point tensor.
    """
    if features is None:
        raise ValueError(
            f"the {who!r} sampler is feature-guided: pass features=[num_items, C] "
            "(for proposals, see sgs_tad.detection.proposals.proposal_descriptors)."
        )
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise TypeError(
            f"the {who!r} sampler needs a floating-point torch.Tensor of features, got "
            f"{type(features).__name__}"
            + (f" of dtype {features.dtype}" if isinstance(features, torch.Tensor) else "")
            + "."
        )
    if features.dim() != 2 or features.shape[0] != num_items:
        raise ValueError(
            f"the {who!r} sampler needs features of shape [num_items={num_items}, C], got "
            f"{tuple(features.shape)}; flatten per-item features to one vector each."
        )
    if not bool(torch.isfinite(features).all()):
        raise ValueError(
            f"the {who!r} sampler got features containing NaN or inf; "
            "check the encoder output (e.g. AMP overflow) before sampling."
        )
    return features.detach()


def random_seed(generator: torch.Generator | None) -> int:
    """Draw a 31-bit seed from ``generator`` (for libraries with their own RNG, e.g. numpy)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
