"""fp16 overflows a GradScaler cannot see by itself: the feature gradient's.

A :class:`torch.amp.GradScaler` learns of an overflow only from the optimizer's parameter
gradients (``unscale_``). Under SGS the scaled feature gradient ``feats.grad`` lives in an fp16
buffer that no optimizer holds; a gain after the detector's fp32 cast (a feature standardiser's
``rsqrt(var)``, say) can overflow it while every parameter gradient stays finite. The scaler
would then never back off: each step overflows again at the same scale. These two functions
find such an overflow and hand it to the scaler, which then skips the step and halves the
scale through its own bookkeeping (growth tracker included).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["feature_grad_overflowed", "show_overflow"]


def feature_grad_overflowed(feats: torch.Tensor) -> bool:
    """Whether the gradient the detector left in ``feats.grad`` holds a NaN or inf.

    Only a leaf has one (SGS's features); an engine whose features are the output of the
    encoder's graph (:class:`~sgs_tad.engine.EndToEnd`) passes an overflow on to the encoder's
    gradients, where the scaler sees it itself. One host sync.
    """
    if not feats.is_leaf or feats.grad is None:
        return False
    return not bool(torch.isfinite(feats.grad).all())


def show_overflow(parameters: Iterable[torch.Tensor]) -> None:
    """Fill the first trainable parameter's gradient with inf, so that the next
    ``GradScaler.unscale_`` (or ``step``) of an optimizer holding it finds an overflow.

    Only for a step that is to be skipped: the scaler skips it, and the gradients are zeroed
    after it as after any step.
    """
    for p in parameters:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.fill_(math.inf)
            return
