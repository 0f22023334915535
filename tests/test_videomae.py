"""The VideoMAE encoder: sizes, position table, checkpoint layouts (against Hugging Face
``transformers`` as the reference), and exactness under SGS (dropout, drop-path, per-block
checkpointing)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sgs_tad
from sgs_tad.encoders import ENCODERS, VideoMAE, build_encoder, freeze_encoder, load_pretrained
from sgs_tad.encoders.checkpoints import convert_state_dict
from sgs_tad.encoders.videomae import VIDEOMAE_PRESETS, sinusoid_table
from test_sgs import assert_same_grads

TINY: dict[str, Any] = dict(VIDEOMAE_PRESETS["tiny"])


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _vit_params(dim: int, depth: int, *, patch: int = 16, tubelet: int = 2, hidden: int) -> int:
    """VideoMAE's parameter count by hand: patch embedding, blocks, fc_norm."""
    embed = 3 * tubelet * patch * patch * dim + dim
    attn = 3 * dim * dim + 2 * dim + dim * dim + dim  # qkv (no bias), q/v biases, proj
    mlp = 2 * dim * hidden + hidden + dim
    block = attn + mlp + 4 * dim  # two LayerNorms
    return embed + depth * block + 2 * dim


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (LayerNorm weights around 1), so a missed key is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 10
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
    return model


def _tiny(seed: int = 0, **opts: Any) -> VideoMAE:
    enc = build_encoder("videomae_tiny", **opts)
    return _randomise(enc, seed).eval()  # type: ignore[return-value]


def _x(m: int, seed: int = 0, shape: tuple[int, ...] = (3, 4, 32, 32), dtype=torch.float32):
    return torch.randn((m, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- sizes


def test_parameter_counts_of_s_and_b_are_exact() -> None:
    s, b = build_encoder("videomae_s"), build_encoder("videomae_b")
    assert _count(s) == _vit_params(384, 12, hidden=1536) == 21_879_936
    # 86,225,664 of them are Hugging Face's VideoMAEModel (ViT-B, no final norm); + fc_norm.
    assert _count(b) == _vit_params(768, 12, hidden=3072) == 86_225_664 + 2 * 768
    assert s.out_channels == 384 and b.out_channels == 768


@pytest.mark.parametrize(("name", "millions"), [("l", 304), ("h", 632), ("g", 1011)])
def test_parameter_counts_of_the_large_ones_on_meta(name: str, millions: int) -> None:
    with torch.device("meta"):
        enc = build_encoder(f"videomae_{name}")  # type: ignore[arg-type]
    p = VIDEOMAE_PRESETS[name]
    hidden = int(p["embed_dim"] * p.get("mlp_ratio", 4.0))
    expected = _vit_params(
        int(p["embed_dim"]), int(p["depth"]), patch=int(p.get("patch_size", 16)), hidden=hidden
    )
    assert _count(enc) == expected
    assert abs(_count(enc) / 1e6 - millions) < 0.01 * millions


def test_presets_are_registered_and_options_override() -> None:
    assert {f"videomae_{k}" for k in ("tiny", "s", "b", "l", "h", "g")} <= set(ENCODERS)
    enc = build_encoder("videomae_tiny", depth=1, drop_path_rate=0.1)
    assert len(enc.blocks) == 1 and enc.out_channels == TINY["embed_dim"]
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['widths'\].*embed_dim"):
        build_encoder("videomae_s", widths=(1, 2))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        VideoMAE(embed_dim=10, num_heads=3)


# --------------------------------------------------------------------------- forward


def test_output_shapes_and_input_checks() -> None:
    enc = _tiny()
    with torch.no_grad():
        assert enc(_x(0)).shape == (0, 64)
        assert enc(_x(3)).shape == (3, 64)
        assert enc(_x(2, shape=(3, 8, 48, 40))).shape == (2, 64)  # table re-sampled
    with pytest.raises(ValueError, match="divisible by tubelet_size=2"):
        enc(_x(1, shape=(3, 5, 32, 32)))
    with pytest.raises(ValueError, match="at least 2 frames"):
        enc(_x(1, shape=(3, 1, 32, 32)))
    with pytest.raises(ValueError, match="at least patch_size=8"):
        enc(_x(1, shape=(3, 4, 4, 32)))


def test_position_table() -> None:
    table = sinusoid_table(5, 6)
    p, j = 3, 4  # even channel: sine of p / 10000^(4/6); odd channel 5: its cosine
    assert math.isclose(table[p, j].item(), math.sin(p / 10000 ** (4 / 6)))
    assert math.isclose(table[p, j + 1].item(), math.cos(p / 10000 ** (4 / 6)))
    enc = VideoMAE(embed_dim=16, depth=1, num_heads=2)  # native grid 8 x 14 x 14
    assert enc.grid == (8, 14, 14)
    assert enc.position_table((8, 14, 14)) is enc.pos_embed
    # At 160 px (AdaTAD's THUMOS setting) each time step is resized bicubically to 10 x 10.
    small = enc.position_table((8, 10, 10)).view(8, 10, 10, 16)
    step3 = enc.pos_embed.view(8, 14, 14, 16)[3].permute(2, 0, 1).unsqueeze(0)
    expected = torch.nn.functional.interpolate(step3, size=(10, 10), mode="bicubic")
    torch.testing.assert_close(small[3], expected[0].permute(1, 2, 0))
    # In time it is linear: 4 steps from 8 take the means of neighbouring pairs.
    half = enc.position_table((4, 14, 14)).view(4, 14, 14, 16)
    native = enc.pos_embed.view(8, 14, 14, 16)
    torch.testing.assert_close(half[1], (native[2] + native[3]) / 2)
    assert "pos_embed" not in enc.state_dict()  # fixed, never saved or loaded


def test_snippets_are_encoded_independently() -> None:
    enc = _tiny(drop_path_rate=0.3, drop_rate=0.1, attn_drop_rate=0.1)
    x = _x(4, seed=5)
    with torch.no_grad():
        full = enc(x)
        parts = torch.cat([enc(x[:1]), enc(x[1:])])
    torch.testing.assert_close(parts, full, rtol=1e-5, atol=1e-6)
    report = sgs_tad.check_snippet_independence(enc.train(), x)
    assert report.independent, report


def test_every_parameter_gets_a_gradient_and_freezing_follows_blocks() -> None:
    enc = _tiny().train()
    enc(_x(2)).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    enc = freeze_encoder(_tiny(), frozen_stages=1)
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    stem_and_first = ("patch_embed", "blocks.0.")
    assert frozen == {n for n, _ in enc.named_parameters() if n.startswith(stem_and_first)}


# --------------------------------------------------------------------------- checkpoints


def _videomae_file(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    """A fine-tuned VideoMAE file: ``{"module": ...}`` with the classifier ``head``."""
    dim = sd["fc_norm.weight"].shape[0]
    return {"module": {**sd, "head.weight": torch.randn(400, dim), "head.bias": torch.randn(400)}}


def _pretrain_file(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    """A self-supervised VideoMAE file: ``encoder.`` + decoder, under ``"model"``."""
    dim = sd["norm.weight"].shape[0]
    out = {"encoder." + k: v for k, v in sd.items()}
    out |= {
        "encoder_to_decoder.weight": torch.randn(32, dim),
        "mask_token": torch.zeros(1, 1, 32),
        "decoder.blocks.0.attn.qkv.weight": torch.randn(96, 32),
        "decoder.norm.weight": torch.ones(32),
    }
    return {"model": out, "epoch": 800}


def _mmaction2_file(sd: dict[str, torch.Tensor], table: torch.Tensor) -> dict[str, object]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = k.replace("mlp.fc1.", "mlp.layers.0.0.").replace("mlp.fc2.", "mlp.layers.1.")
        out["backbone." + k.replace("patch_embed.proj.", "patch_embed.projection.")] = v
    out["backbone.pos_embed"] = table.unsqueeze(0)  # mmaction2 saves the fixed table
    out["cls_head.fc_cls.weight"] = torch.randn(400, table.shape[1])
    return {"meta": {"mmaction_version": "1.2.0"}, "state_dict": out}


def _hf_file(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``VideoMAEForVideoClassification`` names, q/k/v split."""
    out: dict[str, torch.Tensor] = {}
    block_names = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "attn.q_bias": "attention.attention.q_bias",
        "attn.v_bias": "attention.attention.v_bias",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for k, v in sd.items():
        if k.startswith("patch_embed.proj."):
            out["videomae.embeddings.patch_embeddings.projection." + k.split(".")[-1]] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            layer = f"videomae.encoder.layer.{i}."
            if rest == "attn.qkv.weight":
                for name, part in zip(("query", "key", "value"), v.chunk(3)):
                    out[f"{layer}attention.attention.{name}.weight"] = part
                continue
            if rest in block_names:  # q_bias, v_bias
                out[layer + block_names[rest]] = v
            else:
                base, leaf = rest.rsplit(".", 1)
                out[f"{layer}{block_names[base]}.{leaf}"] = v
        elif k.startswith("norm."):
            out["videomae.layernorm." + k.split(".")[-1]] = v
        else:  # fc_norm
            out[k] = v
    out["classifier.weight"] = torch.randn(400, sd["patch_embed.proj.bias"].shape[0])
    return out


@pytest.mark.parametrize("layout", ["videomae", "pretrain", "mmaction2", "hf"])
def test_checkpoint_layouts_round_trip(layout: str) -> None:
    mean_pooling = layout != "pretrain"
    source = _tiny(3, use_mean_pooling=mean_pooling)
    sd = source.state_dict()
    public: dict[str, Any] = {
        "videomae": lambda: _videomae_file(sd),
        "pretrain": lambda: _pretrain_file(sd),
        "mmaction2": lambda: _mmaction2_file(sd, source.pos_embed),
        "hf": lambda: _hf_file(sd),
    }[layout]()
    fresh = build_encoder("videomae_tiny", use_mean_pooling=mean_pooling).eval()
    report = load_pretrained(fresh, public)
    assert report.layout == ("videomae" if layout == "pretrain" else layout)
    assert report.missing == () and report.unexpected == ()
    assert len(report.loaded) == len(fresh.state_dict()) and report.ignored
    x = _x(2, seed=4)
    with torch.no_grad():
        assert torch.equal(fresh(x), source(x))


def test_checkpoint_file_via_build_encoder_and_errors(tmp_path: Path) -> None:
    source = _tiny(5)
    path = tmp_path / "videomae_tiny.pth"
    torch.save(_videomae_file(source.state_dict()), path)
    built = build_encoder("videomae_tiny", weights=path).eval()
    x = _x(1, seed=6)
    with torch.no_grad():
        assert torch.equal(built(x), source(x))
    # A pretraining file has a final norm and no fc_norm: the error names both.
    with pytest.raises(ValueError, match=r"missing keys \['fc_norm.*unexpected keys \['norm"):
        pretrained = _pretrain_file(_tiny(use_mean_pooling=False).state_dict())
        load_pretrained(build_encoder("videomae_tiny"), pretrained)
    # A learned (or differently sized) position table cannot be dropped silently.
    learned = _mmaction2_file(source.state_dict(), torch.randn_like(source.pos_embed))
    with pytest.raises(ValueError, match="not the fixed sinusoid position table"):
        load_pretrained(build_encoder("videomae_tiny"), learned)
    hf = _hf_file(source.state_dict())
    hf["videomae.encoder.layer.0.attention.attention.key.bias"] = torch.zeros(64)
    with pytest.raises(ValueError, match="has a key bias"):
        load_pretrained(build_encoder("videomae_tiny"), hf, layout="hf")
    assert convert_state_dict(source, _hf_file(source.state_dict()))[1] == "hf"


# --------------------------------------------------------------------------- SGS exactness


def _loss_fn(weights: torch.Tensor):
    def loss(feats: torch.Tensor) -> torch.Tensor:  # [B, N, C]
        return (torch.tanh(feats) * weights).sum()

    return loss


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _sgs_vs_end_to_end(
    make, snippets: torch.Tensor, *, k: int, seed: int = 11, **sgs_options: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Encoder gradients of EndToEnd and of SGS at ratio 1, from the same initial state and
    the same global RNG seed (so dropout draws agree when both run one micro-batch)."""
    out = []
    for engine_of in (
        lambda e: sgs_tad.EndToEnd(e),
        lambda e: sgs_tad.SequentializedGradientSampler(
            e, micro_batch_size=k, ratio=1.0, **sgs_options
        ),
    ):
        enc = make()
        weights = torch.randn(
            snippets.shape[1], enc.out_channels, generator=torch.Generator().manual_seed(2),
            dtype=snippets.dtype,
        )  # fmt: skip
        engine = engine_of(enc)
        torch.manual_seed(seed)
        feats = engine.encode(snippets)
        _loss_fn(weights)(feats).backward()
        engine.backward(snippets, feats)
        out.append(_grads(enc))
    return out[0], out[1]


@pytest.mark.parametrize(
    ("opts", "k"),
    [
        ({}, 2),  # no randomness: any K
        ({"drop_path_rate": 0.3, "drop_rate": 0.1, "attn_drop_rate": 0.2}, 5),  # replayed
        ({"drop_path_rate": 0.3, "drop_rate": 0.1, "checkpoint_blocks": True}, 5),
        ({"checkpoint_blocks": True}, 2),
    ],
)
def test_sgs_ratio_one_equals_end_to_end_float64(opts: dict[str, Any], k: int) -> None:
    # With dropout, K = N: one micro-batch draws the masks exactly as the plain forward does.
    snippets = _x(5, seed=9, dtype=torch.float64).unsqueeze(0)

    def make() -> VideoMAE:
        return _tiny(7, **opts).double().train()

    reference, got = _sgs_vs_end_to_end(make, snippets, k=k)
    assert sorted(reference) == sorted(n for n, _ in make().named_parameters())
    assert_same_grads(got, reference, 1e-10)


def test_sgs_replays_dropout_with_small_micro_batches() -> None:
    """K < N with drop-path, dropout and per-block checkpointing: the masks differ from a
    plain forward's (drawn per micro-batch), but SGS's determinism check inside backward (the
    recomputed features must equal phase 1's) passes, so phase 3 replays phase 1's masks."""
    enc = _tiny(7, drop_path_rate=0.4, drop_rate=0.1, checkpoint_blocks=True).double().train()
    snippets = _x(6, seed=9, dtype=torch.float64).unsqueeze(0)
    sgs = sgs_tad.SequentializedGradientSampler(enc, micro_batch_size=2, ratio=1.0)
    torch.manual_seed(3)
    feats = sgs.encode(snippets)
    feats.sum().backward()
    sgs.backward(snippets, feats)
    assert all(p.grad is not None for p in enc.parameters())


# --------------------------------------------------------------------------- transformers


def _hf_config(**opts: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    # VideoMAE's code uses LayerNorm eps 1e-6; transformers' config default is 1e-12.
    base = dict(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, layer_norm_eps=1e-6,
        num_labels=5,
    )  # fmt: skip
    return transformers.VideoMAEConfig(**(base | opts))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("hub_names", [False, True])
def test_features_equal_transformers_videomae_after_conversion(hub_names: bool) -> None:
    """transformers' VideoMAEForVideoClassification as the reference: fc_norm(mean(tokens))."""
    from transformers import VideoMAEForVideoClassification

    torch.manual_seed(0)
    hf = _randomise(VideoMAEForVideoClassification(_hf_config()), 1).eval()
    # transformers builds this fc_norm with LayerNorm's default eps 1e-5 where VideoMAE (and
    # the checkpoints' training) used 1e-6: align it, or features differ by ~1e-6 relative.
    hf.fc_norm.eps = 1e-6
    sd = hf.state_dict()
    if hub_names:  # the files on the Hub (and transformers 4.x) name the biases q_bias / v_bias
        sd = {
            k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v
            for k, v in sd.items()
        }
    ours = build_encoder("videomae_tiny").eval()
    report = load_pretrained(ours, sd)
    assert report.layout == "hf" and not report.missing and not report.unexpected
    x = _x(3, seed=2)
    with torch.no_grad():
        tokens = hf.videomae(pixel_values=x.transpose(1, 2)).last_hidden_state
        reference = hf.fc_norm(tokens.mean(1))
        got = ours(x)
    assert _rel(got, reference) <= 1e-5


def test_features_equal_transformers_without_mean_pooling() -> None:
    from transformers import VideoMAEModel

    hf = _randomise(VideoMAEModel(_hf_config(use_mean_pooling=False)), 2).eval()
    ours = build_encoder("videomae_tiny", use_mean_pooling=False).eval()
    assert load_pretrained(ours, hf.state_dict()).layout == "hf"
    x = _x(2, seed=3)
    with torch.no_grad():
        reference = hf(pixel_values=x.transpose(1, 2)).last_hidden_state.mean(1)
        assert _rel(ours(x), reference) <= 1e-5


# --------------------------------------------------------------------------- LoRA


def _lora(enc: nn.Module, seed: int) -> nn.Module:
    peft = pytest.importorskip("peft")
    # A regex (peft full-matches it), so that patch_embed.proj, a Conv3d, is not adapted.
    blocks = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=blocks)
    model = peft.get_peft_model(enc, config)
    # peft starts lora_B at zero (a no-op) and draws lora_A from the global RNG: set both from
    # a seeded generator, so the adapters change the output and two builds are identical.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def test_lora_adapts_every_targeted_linear_and_changes_the_output() -> None:
    base = _tiny(4)
    x = _x(2, seed=1)
    with torch.no_grad():
        before = base(x)
    model = _lora(base, 5)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 2 blocks x (qkv, proj, fc1, fc2), each with an A and a B matrix.
    assert len(trainable) == 2 * 4 * 2, trainable
    with torch.no_grad():
        after = model(x)
    assert _rel(after, before) > 1e-3  # qkv goes through the module: LoRA is not bypassed


def test_lora_under_sgs_equals_end_to_end_float64() -> None:
    snippets = _x(4, seed=9, dtype=torch.float64).unsqueeze(0)

    def make() -> nn.Module:
        model = _lora(_tiny(7, drop_path_rate=0.2, drop_rate=0.1).double().train(), 5)
        model.out_channels = TINY["embed_dim"]  # read by _sgs_vs_end_to_end
        return model

    reference, got = _sgs_vs_end_to_end(make, snippets, k=4)
    assert reference and all("lora_" in n for n in reference)
    assert_same_grads(got, reference, 1e-10)
