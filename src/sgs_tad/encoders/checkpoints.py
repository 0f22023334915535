"""Load public video-encoder checkpoints from a local file into the encoders of this package.

Nothing is downloaded: pass the path of a file you fetched yourself. Files are read with
``torch.load(..., weights_only=True)``, so a checkpoint can hold tensors and plain containers but
no pickled code. The state dict is taken from the file's top level, or from its ``"state_dict"``
(TSM repository, mmaction2), ``"model"`` (TSP, VideoMAEv2) or ``"module"`` (VideoMAE) entry.

Supported key layouts (``layout=``; ``"auto"`` picks the one that matches most keys):

=================  ==============  =========================================================
encoder            layout          example key in the file -> key in the encoder
=================  ==============  =========================================================
``tsm_r50``        ``torchvision`` ``layer1.0.conv1.weight`` (torchvision ``resnet50``, also an
                                   ImageNet initialisation) -> same
``tsm_r50``        ``tsm``         ``module.base_model.layer1.0.conv1.net.weight``
                                   (mit-han-lab/temporal-shift-module) -> ``layer1.0.conv1.weight``
``tsm_r50``        ``mmaction2``   ``backbone.layer1.0.conv1.conv.net.weight`` ->
                                   ``layer1.0.conv1.weight``; ``backbone.layer1.0.conv1.bn.*`` ->
                                   ``layer1.0.bn1.*``; ``backbone.conv1.bn.*`` -> ``bn1.*``;
                                   ``downsample.conv/bn`` -> ``downsample.0/1``
``r2plus1d_34``    ``torchvision`` ``layer1.0.conv1.0.0.weight`` (torchvision ``VideoResNet``
                                   naming, as in the IG65M files of moabitcoin/ig65m-pytorch)
                                   -> same
``r2plus1d_34``    ``tsp``         ``features.layer1.0.conv1.0.0.weight`` under ``"model"``
                                   (HumamAlwassel/TSP) -> ``layer1.0.conv1.0.0.weight``
``videomae*``      ``videomae``    original VideoMAE / VideoMAEv2 files -> same names
``videomae*``      ``mmaction2``   ``backbone.blocks.0.mlp.layers.0.0.weight`` (mmaction2,
                                   OpenTAD) -> ``blocks.0.mlp.fc1.weight``
``videomae*``      ``hf``          ``videomae.encoder.layer.0.attention.attention.query.weight``
                                   (Hugging Face) -> rows of ``blocks.0.attn.qkv.weight``
any                ``native``      the encoder's own ``state_dict()`` keys
=================  ==============  =========================================================

In every layout a leading ``module.`` (DataParallel / DDP) and ``backbone.`` (mmaction2
recognisers) are stripped first. Classification heads and preprocessing buffers (``fc``,
``new_fc``, ``fc1``, ``fc2``, ``cls_head``, ``data_preprocessor``) are ignored: the encoders stop
before the head (paper §3.1). ``num_batches_tracked`` buffers are optional in both directions, so a
checkpoint loads into an encoder before or after :func:`sgs_tad.engine.norm.freeze_norm_layers`.

Not supported: mmaction2's own R(2+1)D (``conv_s``/``conv_t`` naming), torchvision's
``r2plus1d_18`` weights (its hidden widths differ from the per-convolution formula used here) and
TSM variants with temporal pooling or non-local blocks. The VideoMAE layouts are detailed in
:mod:`sgs_tad.encoders.videomae_layouts`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Union

import torch
from torch import nn

from sgs_tad.encoders.r2plus1d import R2Plus1D34
from sgs_tad.encoders.tsm import TSMResNet50
from sgs_tad.encoders.videomae import VideoMAE
from sgs_tad.encoders.videomae_layouts import (
    HEADS,
    check_position_table,
    hf_key,
    merge_hf_qkv,
    mmaction2_key,
    videomae_key,
)

__all__ = [
    "LAYOUTS",
    "Layout",
    "LoadReport",
    "convert_state_dict",
    "load_pretrained",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

Layout = Literal["auto", "native", "torchvision", "tsm", "mmaction2", "tsp", "videomae", "hf"]
StateDict = dict[str, torch.Tensor]
PathOrStateDict = Union[str, "os.PathLike[str]", Mapping[str, torch.Tensor]]

_HEADS = ("fc", "new_fc", "fc1", "fc2", "cls_head", "data_preprocessor", *HEADS)
_WRAPPERS = ("module.", "backbone.")


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _native(key: str) -> str | None:
    return key


def _tsm_repo(key: str) -> str:
    # TemporalShift wraps each shifted conv as `.net`; the TSN wrapper names the ResNet base_model.
    return _strip(key, ("base_model.",)).replace(".net.", ".")


_MM_BLOCK = re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.(conv|bn)\.(?:net\.)?(.+)$")
_MM_DOWN = re.compile(r"^(layer\d+\.\d+)\.downsample\.(conv|bn)\.(.+)$")
_MM_STEM = re.compile(r"^conv1\.(conv|bn)\.(.+)$")


def _mmaction2(key: str) -> str | None:
    # mmaction2 wraps conv+bn in a ConvModule: `convN.conv` / `convN.bn` -> `convN` / `bnN`.
    if m := _MM_BLOCK.match(key):
        block, n, kind, rest = m.groups()
        return f"{block}.{'conv' if kind == 'conv' else 'bn'}{n}.{rest}"
    if m := _MM_DOWN.match(key):
        block, kind, rest = m.groups()
        return f"{block}.downsample.{0 if kind == 'conv' else 1}.{rest}"
    if m := _MM_STEM.match(key):
        kind, rest = m.groups()
        return f"{'conv1' if kind == 'conv' else 'bn1'}.{rest}"
    return mmaction2_key(key)  # the ViT names (blocks.N.mlp.layers, patch_embed.projection)


def _tsp(key: str) -> str:
    return _strip(key, ("features.",))


# A converter renames one key, or returns None for a key to ignore.
_CONVERTERS: dict[str, Callable[[str], str | None]] = {
    "native": _native,
    "torchvision": _native,
    "tsm": _tsm_repo,
    "mmaction2": _mmaction2,
    "tsp": _tsp,
    "videomae": videomae_key,
    "hf": hf_key,
}
# Whole-dict steps before renaming, for layouts that split one tensor into several.
_PREPARE: dict[str, Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]] = {
    "hf": merge_hf_qkv,
}

#: Layouts each encoder class accepts, in the order "auto" prefers them on a tie.
LAYOUTS: dict[type[nn.Module], tuple[str, ...]] = {
    TSMResNet50: ("torchvision", "tsm", "mmaction2"),
    R2Plus1D34: ("torchvision", "tsp"),
    VideoMAE: ("videomae", "mmaction2", "hf"),
}


def _layouts_for(encoder: nn.Module) -> tuple[str, ...]:
    for cls, layouts in LAYOUTS.items():
        if isinstance(encoder, cls):
            return (*layouts, "native")
    return ("native",)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        layout: The key layout used (the detected one when ``layout="auto"``).
        loaded: Encoder keys that received a value from the checkpoint.
        missing: Encoder keys the checkpoint had no value for.
        unexpected: Checkpoint keys (after conversion) that match nothing in the encoder.
        ignored: Checkpoint keys dropped on purpose (classifier heads, ``num_batches_tracked``
            the encoder does not have).
    """

    layout: str
    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return (
            f"layout={self.layout!r}: loaded {len(self.loaded)} keys, missing "
            f"{len(self.missing)}, unexpected {len(self.unexpected)}, ignored {len(self.ignored)}"
        )


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """Read a checkpoint file safely and return its state dict (tensors only).

    Args:
        path: A ``.pth`` / ``.pt`` / ``.pth.tar`` file written by ``torch.save``.

    Returns:
        The flat mapping of names to tensors, unwrapped from a ``"state_dict"`` or ``"model"``
        entry if the file holds a training checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {os.fspath(path)!r} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{os.fspath(path)!r} holds pickled objects beyond tensors and plain containers, "
            "which weights_only=True refuses (loading them would run code from the file). Get "
            "a weights-only release of this checkpoint (a state_dict of tensors, or a "
            f".safetensors file) from its source. Original error: {err}"
        ) from err
    return _unwrap(obj, os.fspath(path))


def _unwrap(obj: object, where: str) -> StateDict:
    if not isinstance(obj, Mapping):
        raise TypeError(
            f"{where}: expected a state dict (a mapping of names to tensors), "
            f"got {type(obj).__name__}."
        )
    for entry in ("state_dict", "model", "module"):
        inner = obj.get(entry)
        if isinstance(inner, Mapping):
            return _unwrap(inner, f"{where}[{entry!r}]")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"{where}: found no tensors; top-level entries are {sorted(map(str, obj))[:10]}. "
            "Expected a state dict or a checkpoint with a 'state_dict' or 'model' entry."
        )
    return {str(k): v for k, v in tensors.items()}


def convert_state_dict(
    encoder: nn.Module, state_dict: Mapping[str, torch.Tensor], *, layout: Layout = "auto"
) -> tuple[StateDict, str, tuple[str, ...]]:
    """Rename the keys of a public checkpoint to the encoder's own names.

    Args:
        encoder: The target encoder (its class decides which layouts apply).
        state_dict: The checkpoint's tensors, as :func:`read_state_dict` returns them.
        layout: One of the layouts in the module docstring, or "auto".

    Returns:
        ``(converted, layout_used, ignored_keys)``.
    """
    allowed = _layouts_for(encoder)
    if layout != "auto" and layout not in allowed:
        raise ValueError(
            f"layout={layout!r} is not supported for {type(encoder).__name__}; "
            f"use one of {['auto', *allowed]}."
        )
    own = set(encoder.state_dict())
    candidates = allowed if layout == "auto" else (layout,)
    best: tuple[StateDict, str, tuple[str, ...]] | None = None
    best_hits = -1
    for name in candidates:
        prepared = state_dict
        if name in _PREPARE:
            try:
                prepared = _PREPARE[name](state_dict)
            except ValueError:
                if layout != "auto":
                    raise
                continue  # not this layout
        converted, ignored = _apply(_CONVERTERS[name], prepared, own)
        hits = len(own.intersection(converted))
        if hits > best_hits:
            best, best_hits = (converted, name, ignored), hits
    assert best is not None  # candidates is never empty
    if layout == "auto" and best_hits == 0:
        raise ValueError(
            f"no key of the checkpoint matches {type(encoder).__name__} in any supported layout "
            f"{list(allowed)}; its first keys are {list(state_dict)[:5]}, the encoder's are "
            f"{sorted(own)[:5]}. Is it a checkpoint of this architecture?"
        )
    return best


def _apply(
    convert: Callable[[str], str | None], state_dict: Mapping[str, torch.Tensor], own: set[str]
) -> tuple[StateDict, tuple[str, ...]]:
    out: StateDict = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        new = convert(_strip(key, _WRAPPERS))
        if (
            new is None
            or new.split(".")[0] in _HEADS
            or (new.endswith("num_batches_tracked") and new not in own)
        ):
            ignored.append(key)
            continue
        out[new] = value
    return out, tuple(ignored)


def load_pretrained(
    encoder: nn.Module,
    checkpoint: PathOrStateDict,
    *,
    layout: Layout = "auto",
    strict: bool = True,
) -> LoadReport:
    """Load a public checkpoint (a local file or a state dict) into ``encoder`` in place.

    Args:
        encoder: A :class:`~sgs_tad.encoders.TSMResNet50`, :class:`~sgs_tad.encoders.R2Plus1D34`,
            :class:`~sgs_tad.encoders.VideoMAE`, or any module whose own key names the checkpoint
            uses (``layout="native"``).
        checkpoint: Path of the file, or an already loaded state dict.
        layout: Key layout of the checkpoint; "auto" picks the best-matching supported one.
        strict: If True, raise unless every encoder key is loaded and every checkpoint key is
            used or a known head. If False, load what matches and log what did not.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: Shape mismatches (always), or missing / unexpected keys when ``strict``.

    Example:
        >>> tsp_like = {"model": {"features." + k: v for k, v in
        ...                       R2Plus1D34(layers=(1, 1, 1, 1)).state_dict().items()}}
        >>> print(load_pretrained(R2Plus1D34(layers=(1, 1, 1, 1)), tsp_like))
        layout='tsp': loaded 126 keys, missing 0, unexpected 0, ignored 0
    """
    if isinstance(checkpoint, Mapping):
        state_dict = _unwrap(checkpoint, "checkpoint")
    else:
        state_dict = read_state_dict(checkpoint)
    if isinstance(encoder, VideoMAE):
        check_position_table(encoder, state_dict)
    converted, used, ignored = convert_state_dict(encoder, state_dict, layout=layout)
    own = encoder.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
        for k, v in converted.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} tensors of the checkpoint (layout {used!r}) have the wrong shape "
            f"for {type(encoder).__name__}, e.g. {mismatched[:5]}. The checkpoint is of a "
            "different architecture or width."
        )
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = tuple(k for k in own if k not in converted and k not in optional)
    unexpected = tuple(k for k in converted if k not in own)
    report = LoadReport(
        layout=used,
        loaded=tuple(k for k in converted if k in own),
        missing=missing,
        unexpected=unexpected,
        ignored=ignored,
    )
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint does not fit {type(encoder).__name__} (layout {used!r}): "
            f"{len(missing)} missing keys {list(missing[:8])}, {len(unexpected)} unexpected keys "
            f"{list(unexpected[:8])}. Pass layout= explicitly if auto-detection chose wrongly, "
            "or strict=False to load the matching part."
        )
    encoder.load_state_dict({k: converted[k] for k in report.loaded}, strict=False)
    if missing or unexpected:
        logger.warning("partial checkpoint load into %s: %s", type(encoder).__name__, report)
    else:
        logger.info("loaded checkpoint into %s: %s", type(encoder).__name__, report)
    return report
