"""Key layouts of public VideoMAE / VideoMAEv2 checkpoints (see :mod:`.checkpoints`).

=============  ===================================================  ===========================
layout         example key in the file                              key in :class:`VideoMAE`
=============  ===================================================  ===========================
``videomae``   ``blocks.0.attn.qkv.weight`` under ``"module"`` or   same
               ``"model"`` (MCG-NJU/VideoMAE, OpenGVLab/VideoMAEv2
               fine-tuned files); ``encoder.blocks.0...`` in the
               self-supervised pretraining files
``mmaction2``  ``backbone.blocks.0.mlp.layers.0.0.weight``,         ``blocks.0.mlp.fc1.weight``,
               ``backbone.blocks.0.mlp.layers.1.weight``,           ``blocks.0.mlp.fc2.weight``,
               ``backbone.patch_embed.projection.weight``           ``patch_embed.proj.weight``
               (mmaction2, OpenTAD's converted files)
``hf``         ``videomae.encoder.layer.0.attention.attention.``    ``blocks.0.attn.qkv.weight``
               ``query.weight`` / ``key`` / ``value`` (Hugging      (the three concatenated)
               Face ``transformers``; ``layernorm_before`` ->
               ``norm1``, ``intermediate.dense`` -> ``mlp.fc1``,
               ``output.dense`` -> ``mlp.fc2`` ...)
=============  ===================================================  ===========================

Ignored on purpose: classifier heads (``head``, ``cls_head``, ``classifier``), the pretraining
decoder (``decoder``, ``encoder_to_decoder``, ``mask_token``) and the fixed sinusoid position
table that mmaction2 saves as ``pos_embed``. A *learned* position table cannot be ignored, so
:func:`check_position_table` refuses a ``pos_embed`` that is not the fixed one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from sgs_tad.encoders.videomae import VideoMAE

__all__ = ["HEADS", "check_position_table", "hf_key", "merge_hf_qkv", "mmaction2_key"]

#: First key components that are not part of the encoder.
HEADS = ("head", "classifier", "decoder", "encoder_to_decoder", "mask_token")

_POSITIONS = ("pos_embed", "embeddings.position_embeddings")


def _strip_positions(key: str) -> str | None:
    return None if key in _POSITIONS else key


def videomae_key(key: str) -> str | None:
    """Original VideoMAE / VideoMAEv2 names; the pretraining files add ``encoder.``."""
    if key.startswith("encoder.") and not key.startswith("encoder.layer."):
        key = key[len("encoder.") :]
    return _strip_positions(key)


_MM_FFN = re.compile(r"^(blocks\.\d+)\.mlp\.layers\.(0\.0|1)\.(.+)$")


def mmaction2_key(key: str) -> str | None:
    """mmaction2 / OpenTAD names (``backbone.`` is stripped before)."""
    if m := _MM_FFN.match(key):
        block, layer, rest = m.groups()
        return f"{block}.mlp.{'fc1' if layer == '0.0' else 'fc2'}.{rest}"
    if key.startswith("patch_embed.projection."):
        return "patch_embed.proj." + key[len("patch_embed.projection.") :]
    return _strip_positions(key)


_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_BLOCK = (
    ("attention.attention.qkv.", "attn.qkv."),
    ("attention.attention.q_bias", "attn.q_bias"),
    ("attention.attention.v_bias", "attn.v_bias"),
    ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)


def hf_key(key: str) -> str | None:
    """Hugging Face ``VideoMAEModel`` / ``VideoMAEForVideoClassification`` names, after
    :func:`merge_hf_qkv`."""
    if key.startswith("videomae."):
        key = key[len("videomae.") :]
    if key.startswith("embeddings.patch_embeddings.projection."):
        return "patch_embed.proj." + key[len("embeddings.patch_embeddings.projection.") :]
    if m := _HF_LAYER.match(key):
        index, rest = m.groups()
        for old, new in _HF_BLOCK:
            if rest.startswith(old):
                return f"blocks.{index}.{new}{rest[len(old) :]}"
        return f"blocks.{index}.{rest}"  # unknown: reported as unexpected
    if key.startswith("layernorm."):
        return "norm." + key[len("layernorm.") :]
    return _strip_positions(key)


_HF_QKV = re.compile(r"^(.*\.attention\.attention)\.(query|key|value)\.(weight|bias)$")


def merge_hf_qkv(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate Hugging Face's separate ``query`` / ``key`` / ``value`` weights into one
    ``qkv`` weight ``[3 D, D]`` (query rows first), as VideoMAE stores them.

    The query and value biases are ``q_bias`` / ``v_bias`` in the files on the Hub and in
    ``transformers`` 4.x, ``query.bias`` / ``value.bias`` in the state dict of a
    ``transformers`` 5 model; both become ``q_bias`` / ``v_bias``.

    Raises:
        ValueError: If a block lacks one of the three weights, or has a key bias, which VideoMAE
            cannot represent (its key bias is fixed at zero).
    """
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = _HF_QKV.match(key)
        if m is None:
            out[key] = value
            continue
        prefix, which, kind = m.groups()
        if kind == "weight":
            parts.setdefault(prefix, {})[which] = value
        elif which == "key":
            raise ValueError(
                f"{key}: the checkpoint has a key bias; VideoMAE has query and value biases "
                "only (no key bias), so this is not a VideoMAE checkpoint."
            )
        else:
            out[f"{prefix}.{which[0]}_bias"] = value
    for prefix, qkv in parts.items():
        if set(qkv) != {"query", "key", "value"}:
            raise ValueError(f"{prefix}: found only {sorted(qkv)} of query / key / value weights.")
        out[f"{prefix}.qkv.weight"] = torch.cat([qkv["query"], qkv["key"], qkv["value"]])
    return out


def check_position_table(encoder: VideoMAE, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse a checkpoint whose saved position table is not VideoMAE's fixed sinusoid one.

    mmaction2 saves the fixed table as a buffer; it is ignored on load because
    :class:`VideoMAE` computes it. A learned table (``use_learnable_pos_emb=True``) would be
    silently lost, so it is an error.
    """
    for key, value in state_dict.items():
        bare = key
        for prefix in ("module.", "backbone.", "encoder.", "videomae."):
            bare = bare.removeprefix(prefix)
        if bare not in _POSITIONS:
            continue
        table = value.detach().reshape(-1, value.shape[-1]).to(torch.float64)
        own = encoder.pos_embed.detach().to(torch.float64)
        if table.shape != own.shape or not torch.allclose(table, own, atol=1e-4):
            raise ValueError(
                f"{key} ({tuple(value.shape)}) is not the fixed sinusoid position table of "
                f"this VideoMAE (grid {encoder.grid}, {tuple(own.shape)}): either the "
                "checkpoint learned its position embedding, which VideoMAE here does not "
                "support, or it was pretrained for another num_frames / image_size / "
                "patch_size: build the encoder with those."
            )
