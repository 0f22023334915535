"""Snippet encoders ``[M, 3, L, H, W] -> [M, C]`` for end-to-end TAD, and the paper's freezing.

Three encoders, built by name with :func:`build_encoder`:

* ``"small3d"`` - :class:`Small3DCNN`, a small residual 3D CNN with GroupNorm for CPU runs
  (C = 128 by default); exact under SGS in training mode.
* ``"tsm_r50"`` - :class:`TSMResNet50`, TSM-ResNet50 (C = 2048), 8 frames at 224 px in the paper.
* ``"r2plus1d_34"`` - :class:`R2Plus1D34`, R(2+1)D-34 (C = 512), 16 frames at 112 px in the paper.

The two large ones load public checkpoints from a local file (:func:`load_pretrained`; layouts in
:mod:`sgs_tad.encoders.checkpoints`). The paper fixes the first two stages and freezes every
BatchNorm (§4.1): :func:`freeze_encoder` does both.

Example:
    >>> import torch
    >>> enc = build_encoder("small3d", widths=(8, 16, 32))
    >>> enc = freeze_encoder(enc, frozen_stages=1)
    >>> enc(torch.randn(3, 3, 4, 32, 32)).shape
    torch.Size([3, 32])
    >>> enc.stem[0].weight.requires_grad, enc.layer2.conv1.weight.requires_grad
    (False, True)
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Literal

from torch import nn

from sgs_tad.encoders.base import VideoEncoder
from sgs_tad.encoders.checkpoints import Layout, LoadReport, load_pretrained, read_state_dict
from sgs_tad.encoders.r2plus1d import R2Plus1D34
from sgs_tad.encoders.small3d import Small3DCNN
from sgs_tad.encoders.tsm import TSMResNet50, temporal_shift
from sgs_tad.engine.norm import freeze_norm_layers, freeze_stages

__all__ = [
    "ENCODERS",
    "EncoderName",
    "LoadReport",
    "R2Plus1D34",
    "Small3DCNN",
    "TSMResNet50",
    "VideoEncoder",
    "build_encoder",
    "freeze_encoder",
    "load_pretrained",
    "read_state_dict",
    "temporal_shift",
]

EncoderName = Literal["small3d", "tsm_r50", "r2plus1d_34"]

#: Encoder classes by registry name.
ENCODERS: dict[str, type[VideoEncoder]] = {
    "small3d": Small3DCNN,
    "tsm_r50": TSMResNet50,
    "r2plus1d_34": R2Plus1D34,
}


def build_encoder(
    name: EncoderName,
    *,
    weights: str | os.PathLike[str] | None = None,
    layout: Layout = "auto",
    strict: bool = True,
    **opts: Any,
) -> VideoEncoder:
    """Build an encoder by name, optionally loading a local checkpoint.

    The encoder is returned as built: trainable everywhere, BatchNorm untouched. Call
    :func:`freeze_encoder` for the paper's setting.

    Args:
        name: "small3d", "tsm_r50" or "r2plus1d_34".
        weights: Path of a checkpoint file to load (see :func:`load_pretrained`).
        layout: Key layout of ``weights``; "auto" detects it.
        strict: Require an exact key match when loading ``weights``.
        **opts: Keyword options of the encoder class (e.g. ``widths=`` for small3d,
            ``fold_div=`` for tsm_r50, ``bn_eps=`` for r2plus1d_34).

    Returns:
        The encoder, mapping ``[M, 3, L, H, W]`` to ``[M, encoder.out_channels]``.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {sorted(ENCODERS)}.")
    cls = ENCODERS[name]
    accepted = [
        p.name for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"
    ]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise TypeError(
            f"build_encoder({name!r}): unknown option(s) {unknown}; {cls.__name__} accepts "
            f"{accepted}."
        )
    encoder = cls(**opts)
    if weights is not None:
        load_pretrained(encoder, weights, layout=layout, strict=strict)
    return encoder


def freeze_encoder(
    encoder: VideoEncoder, *, frozen_stages: int = 2, freeze_norm: bool = True
) -> VideoEncoder:
    """Apply the paper's encoder setting (§4.1): fixed first stages, frozen BatchNorm.

    Do this after loading weights and before building the optimiser.

    Args:
        encoder: An encoder of this package.
        frozen_stages: As mmaction2's ``frozen_stages`` (used by the ETAD configs): -1 freezes
            nothing, 0 the stem, k the stem and residual stages 1..k. The paper uses 2.
        freeze_norm: Replace every BatchNorm by :class:`~sgs_tad.FrozenBatchNorm`, which
            is what makes SGS exact for TSM and R(2+1)D. GroupNorm (small3d) is left as it is.

    Returns:
        The encoder (the same object, modified in place).
    """
    if not isinstance(encoder, VideoEncoder):
        raise TypeError(
            f"freeze_encoder expects an encoder of sgs_tad.encoders, got "
            f"{type(encoder).__name__}; for other modules use sgs_tad.freeze_stages and "
            "sgs_tad.freeze_norm_layers directly."
        )
    prefixes = encoder.stage_prefixes(frozen_stages)
    # A BatchNorm already replaced by FrozenBatchNorm has no parameters left to freeze.
    names = [p for p in prefixes if _has_params(encoder, p)]
    if names:
        freeze_stages(encoder, names)
    if freeze_norm:
        frozen = freeze_norm_layers(encoder)
        if frozen is not encoder:  # only if the root itself were a BatchNorm
            raise TypeError(f"cannot freeze a bare BatchNorm as an encoder: {encoder!r}")
    return encoder


def _has_params(module: nn.Module, prefix: str) -> bool:
    return any(n == prefix or n.startswith(prefix + ".") for n, _ in module.named_parameters())
