"""HFVideoEncoder: Hugging Face video backbones (tiny random configs, nothing downloaded) as
snippet encoders, their size errors, exactness under SGS, and LoRA on transformers' VideoMAE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sgs_tad
from sgs_tad.encoders import HFVideoEncoder, build_encoder, load_pretrained
from test_sgs import assert_same_grads
from test_videomae import _randomise, _rel, _sgs_vs_end_to_end, _x

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def _backbone(kind: str, **opts: Any) -> nn.Module:
    torch.manual_seed(0)
    if kind == "videomae":
        cfg = transformers.VideoMAEConfig(
            image_size=32, patch_size=8, num_frames=4, intermediate_size=64, **SMALL, **opts
        )
        return transformers.VideoMAEModel(cfg)
    if kind == "timesformer":
        cfg = transformers.TimesformerConfig(
            image_size=32, patch_size=8, num_frames=4, intermediate_size=64, **SMALL, **opts
        )
        return transformers.TimesformerModel(cfg)
    if kind == "vivit":
        cfg = transformers.VivitConfig(
            image_size=32, num_frames=4, tubelet_size=[2, 8, 8], intermediate_size=64, **SMALL,
            **opts,
        )  # fmt: skip
        return transformers.VivitModel(cfg)
    cfg = transformers.VJEPA2Config(
        crop_size=32, frames_per_clip=4, patch_size=8, tubelet_size=2, mlp_ratio=2.0,
        pred_hidden_size=16, pred_num_hidden_layers=1, pred_num_attention_heads=2, **SMALL, **opts,
    )  # fmt: skip
    return transformers.VJEPA2Model(cfg)


KINDS = ["videomae", "timesformer", "vivit", "vjepa2"]


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_pooling_and_stages(kind: str) -> None:
    enc = HFVideoEncoder(_backbone(kind)).eval()
    with torch.no_grad():
        assert enc(_x(3)).shape == (3, 32)
        assert enc(_x(0)).shape == (0, 32)
    assert len(enc.stage_names) == 2 and enc.stem_names
    if kind in ("timesformer", "vivit"):
        cls = HFVideoEncoder(enc.model, pool="cls").eval()
        with torch.no_grad():
            tokens = enc.model(pixel_values=_x(1).transpose(1, 2)).last_hidden_state
            torch.testing.assert_close(cls(_x(1)), tokens[:, 0])
            torch.testing.assert_close(enc(_x(1)), tokens[:, 1:].mean(1))


@pytest.mark.parametrize("kind", KINDS)
def test_sizes_the_model_cannot_take_are_refused_clearly(kind: str) -> None:
    enc = HFVideoEncoder(_backbone(kind)).eval()
    with pytest.raises(ValueError, match=r"only accepts snippets of 4 frames.*got 2 frames"):
        enc(_x(1, shape=(3, 2, 32, 32)))
    if kind == "timesformer":  # re-samples its spatial position embeddings itself
        with torch.no_grad():
            assert enc(_x(1, shape=(3, 4, 48, 48))).shape == (1, 32)
    else:
        with pytest.raises(ValueError, match=r"of 32x32 pixels.*got 4 frames of 48x48"):
            enc(_x(1, shape=(3, 4, 48, 48)))
    if kind == "videomae":
        with pytest.raises(ValueError, match="sgs_tad.encoders.VideoMAE, which re-samples"):
            enc(_x(1, shape=(3, 4, 48, 48)))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"supports transformers models of type.*'vivit'"):
        HFVideoEncoder(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="videomae has no CLS token"):
        HFVideoEncoder(_backbone("videomae"), pool="cls")


def test_classification_model_is_reduced_to_its_backbone_and_loads_locally(
    tmp_path: Path,
) -> None:
    backbone = _backbone("videomae")
    classifier = transformers.VideoMAEForVideoClassification(backbone.config)
    assert HFVideoEncoder(classifier).model is classifier.videomae
    backbone.save_pretrained(tmp_path)
    loaded = HFVideoEncoder.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(2)), HFVideoEncoder(backbone).eval()(_x(2)))


def test_wrapped_videomae_matches_the_library_videomae() -> None:
    hf = _randomise(_backbone("videomae", use_mean_pooling=False, layer_norm_eps=1e-6), 3)
    ours = build_encoder(
        "videomae", embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=8,
        num_frames=4, image_size=32, use_mean_pooling=False,
    ).eval()  # fmt: skip
    load_pretrained(ours, hf.state_dict())
    with torch.no_grad():
        assert _rel(HFVideoEncoder(hf).eval()(_x(2)), ours(_x(2))) <= 1e-5


@pytest.mark.parametrize(
    ("kind", "opts", "k"),
    [
        ("videomae", {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}, 4),
        ("timesformer", {}, 2),
        ("vivit", {"hidden_dropout_prob": 0.1}, 4),
        ("vjepa2", {}, 2),
        ("videomae", {"hidden_dropout_prob": 0.1, "checkpointing": True}, 4),
    ],
)
def test_sgs_ratio_one_equals_end_to_end_float64(kind: str, opts: dict[str, Any], k: int) -> None:
    # With dropout, K = N (one micro-batch draws the masks as the plain forward does).
    snippets = _x(4, seed=9, dtype=torch.float64).unsqueeze(0)
    opts = dict(opts)
    checkpointing = opts.pop("checkpointing", False)

    def make() -> HFVideoEncoder:
        backbone = _randomise(_backbone(kind, **opts), 4)
        if checkpointing:  # transformers' per-layer activation checkpointing inside a snippet
            backbone.gradient_checkpointing_enable({"use_reentrant": False})
        return HFVideoEncoder(backbone).double().train()

    # transformers draws attention dropout inside its attention function, not in an
    # nn.Dropout module, so SGS's first-batch independence check cannot switch it off and sees
    # masks that depend on the batch: skip the check there (the gradients below are exact).
    check = opts.get("attention_probs_dropout_prob", 0.0) == 0.0
    reference, got = _sgs_vs_end_to_end(make, snippets, k=k, independence_check=check)
    assert reference
    assert_same_grads(got, reference, 1e-10)


def test_independence_check_accepts_the_wrapper() -> None:
    enc = HFVideoEncoder(_backbone("videomae", hidden_dropout_prob=0.1)).train()
    assert sgs_tad.check_snippet_independence(enc, _x(4)).independent


def test_lora_on_transformers_videomae_query_value() -> None:
    """transformers 4.x computed VideoMAE's q/k/v as ``F.linear(h, self.query.weight, q_bias)``,
    which bypasses a LoRA wrapper around ``query``; transformers 5 calls ``self.query(h)``.
    Whichever is installed, this records what LoRA on query/value does."""
    peft = pytest.importorskip("peft")
    backbone = _randomise(_backbone("videomae"), 5).eval()
    attn = backbone.encoder.layer[0].attention.attention
    bypassed = hasattr(attn, "q_bias")  # the 4.x layout
    with torch.no_grad():
        before = HFVideoEncoder(backbone).eval()(_x(2))
    model = peft.get_peft_model(
        backbone, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
        after = HFVideoEncoder(model.base_model.model).eval()(_x(2))
    assert (_rel(after, before) < 1e-7) == bypassed
