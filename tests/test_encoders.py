"""Tests of sgs_tad.encoders: shapes, independence of snippets, the TSM shift, the R(2+1)D
widths, loading checkpoints written in each public key layout, and the paper's freezing."""

from __future__ import annotations

import doctest
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

from sgs_tad.encoders import (
    ENCODERS,
    R2Plus1D34,
    Small3DCNN,
    TSMResNet50,
    VideoEncoder,
    build_encoder,
    freeze_encoder,
    load_pretrained,
    read_state_dict,
    temporal_shift,
)
from sgs_tad.encoders.checkpoints import convert_state_dict
from sgs_tad.encoders.r2plus1d import midplanes
from sgs_tad.engine.norm import FrozenBatchNorm, training_batchnorms

ModuleT = TypeVar("ModuleT", bound=nn.Module)
SMALL_INPUT = (3, 4, 32, 32)  # [3, L, H, W] of one snippet for the big models


def _randomise(model: ModuleT, seed: int) -> ModuleT:
    """Seeded weights and random BatchNorm statistics, so a load that skips a buffer is caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(seed)
            elif t.dim() > 1:  # conv weights: He-scaled, like the default init
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith(("running_var", "weight")):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
            else:  # bias, running_mean
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def _snippets(m: int, seed: int = 0, shape: tuple[int, ...] = SMALL_INPUT) -> torch.Tensor:
    return torch.randn((m, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tsm() -> TSMResNet50:
    return _randomise(TSMResNet50(), 1)


@pytest.fixture(scope="module")
def r2p1d() -> R2Plus1D34:
    return _randomise(R2Plus1D34(), 2)


# --------------------------------------------------------------------------- shapes, snippets


@pytest.mark.parametrize("m", [0, 1, 3])
def test_output_shapes(m: int, tsm: TSMResNet50, r2p1d: R2Plus1D34) -> None:
    small = Small3DCNN()
    with torch.no_grad():
        assert small(_snippets(m, shape=(3, 8, 32, 32))).shape == (m, 128)
        assert tsm(_snippets(m)).shape == (m, 2048)
        assert r2p1d(_snippets(m)).shape == (m, 512)


def test_small3d_options_and_odd_sizes() -> None:
    enc = Small3DCNN(widths=(8, 16, 32, 64, 256), norm="none")
    assert enc.out_channels == 256
    with torch.no_grad():
        assert enc(_snippets(2, shape=(3, 5, 48, 40))).shape == (2, 256)
        assert enc(_snippets(1, shape=(3, 1, 8, 8))).shape == (1, 256)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())


@pytest.mark.parametrize("name", ["small3d", "tsm_r50", "r2plus1d_34"])
def test_snippets_are_encoded_independently_and_deterministically(
    name: str, tsm: TSMResNet50, r2p1d: R2Plus1D34
) -> None:
    # small3d stays in training mode: GroupNorm makes it exact under SGS without freezing.
    enc = {"small3d": Small3DCNN().train(), "tsm_r50": tsm, "r2plus1d_34": r2p1d}[name]
    x = _snippets(3, seed=5)
    with torch.no_grad():
        full = enc(x)
        again = enc(x)
        parts = torch.cat([enc(x[:1]), enc(x[1:])])
    assert torch.equal(full, again)
    torch.testing.assert_close(parts, full, rtol=1e-5, atol=1e-5)
    # A snippet's feature must not depend on its neighbours.
    y = x.clone()
    y[1:] = _snippets(2, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(enc(y)[0], full[0], rtol=1e-5, atol=1e-5)


def test_every_trainable_parameter_gets_a_gradient() -> None:
    enc = Small3DCNN(widths=(8, 16, 32))
    enc(_snippets(2, shape=(3, 4, 16, 16))).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.zeros(2, 4, 3, 8, 8), ValueError, r"\[M, 3, L, H, W\].*transpose"),
        (torch.zeros(3, 4, 8, 8), ValueError, "got shape"),
        (torch.zeros(1, 3, 2, 8, 8, dtype=torch.int32), TypeError, "uint8 pixels .* or"),
    ],
)
def test_bad_input_is_rejected(x: torch.Tensor, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Small3DCNN()(x)


# --------------------------------------------------------------------------- TSM


def _hand_shift(x: torch.Tensor, n_segment: int, fold_div: int) -> torch.Tensor:
    """TSM's definition, element by element."""
    nt, c = x.shape[:2]
    fold = c // fold_div
    out = torch.zeros_like(x)
    for i in range(nt):
        t = i % n_segment
        for ch in range(c):
            if ch < fold:  # from the next frame of the same snippet
                if t + 1 < n_segment:
                    out[i, ch] = x[i + 1, ch]
            elif ch < 2 * fold:  # from the previous frame
                if t > 0:
                    out[i, ch] = x[i - 1, ch]
            else:
                out[i, ch] = x[i, ch]
    return out


def test_temporal_shift_matches_hand_computation() -> None:
    # 2 snippets x 3 frames, 16 channels: fold = 2.
    x = torch.arange(6 * 16, dtype=torch.float).view(6, 16, 1, 1)
    out = temporal_shift(x, 3)
    # Frame 0 of snippet 0: channels 0-1 from frame 1 (16 + c), 2-3 zero, the rest its own.
    assert out[0, :5, 0, 0].tolist() == [16.0, 17.0, 0.0, 0.0, 4.0]
    # Last frame of snippet 0 gets nothing from the first frame of snippet 1.
    assert out[2, :4, 0, 0].tolist() == [0.0, 0.0, 18.0, 19.0]
    assert torch.equal(out, _hand_shift(x, 3, 8))
    y = torch.randn(8, 12, 2, 3)
    for n_segment, fold_div in [(4, 8), (2, 4), (1, 8), (8, 3)]:
        assert torch.equal(
            temporal_shift(y, n_segment, fold_div=fold_div), _hand_shift(y, n_segment, fold_div)
        )
    with pytest.raises(ValueError, match="multiple of n_segment"):
        temporal_shift(y, 3)


def test_tsm_shifts_the_residual_branch_only(tsm: TSMResNet50) -> None:
    block: Any = tsm.get_submodule("layer1.1")  # 256 -> 256, no projection
    x = torch.randn(2 * 4, 256, 4, 4)
    seen: list[torch.Tensor] = []
    handle = block.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        block(x, 4)
    handle.remove()
    assert torch.equal(seen[0], _hand_shift(x, 4, 8))
    # With the branch silenced (bn3 = 0) the block is relu(x): the skip path is not shifted.
    silent: Any = TSMResNet50().get_submodule("layer1.1").eval()
    with torch.no_grad():
        silent.bn3.weight.zero_()
        silent.bn3.bias.zero_()
        assert torch.equal(silent(x, 4), torch.relu(x))


def test_tsm_without_shift_is_a_per_frame_model(tsm: TSMResNet50) -> None:
    plain = TSMResNet50(shift=False).eval()
    plain.load_state_dict(tsm.state_dict())
    x = _snippets(2)
    frames = x.transpose(1, 2).reshape(8, 3, 32, 32).unsqueeze(2)  # 8 one-frame snippets
    with torch.no_grad():
        per_frame = plain(frames).view(2, 4, -1).mean(1)
        torch.testing.assert_close(plain(x), per_frame, rtol=1e-4, atol=1e-5)
        # The shift mixes frames, so the real TSM differs.
        assert not torch.allclose(tsm(x), per_frame, atol=1e-3)


# --------------------------------------------------------------------------- R(2+1)D


def test_r2plus1d_hidden_widths_follow_tran_et_al() -> None:
    # (64, 64) -> 144 etc.; 288 / 576 / 1152 are the widths the IG65M port patches in.
    assert [
        midplanes(a, b)
        for a, b in [
            (64, 64),
            (64, 128),
            (128, 128),
            (128, 256),
            (256, 256),
            (256, 512),
            (512, 512),
        ]
    ] == [144, 230, 288, 460, 576, 921, 1152]


def test_parameter_counts(tsm: TSMResNet50, r2p1d: R2Plus1D34) -> None:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    # torchvision resnet50 has 25,557,032 parameters, 2,049,000 of them in the 1000-way fc.
    assert count(tsm) == 25_557_032 - 2_049_000
    # R(2+1)D-34 is published at about 63.5 M parameters.
    assert count(r2p1d) == 63_491_975
    assert 63.0e6 < count(r2p1d) < 64.0e6
    assert r2p1d.state_dict()["layer2.0.conv2.0.0.weight"].shape == (288, 128, 1, 3, 3)
    assert r2p1d.state_dict()["layer2.0.conv1.0.0.weight"].shape == (230, 64, 1, 3, 3)
    assert r2p1d.stem[0].weight.shape == (45, 3, 1, 7, 7)
    assert r2p1d.stem[1].eps == 1e-3


# --------------------------------------------------------------------------- checkpoints
# Each helper renames our keys to what the public file holds, written independently of the
# loader's conversion rules, and wraps them as the public file does.


def _tv_resnet_file(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    head = {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    return {**sd, **head}


def _tsm_repo_file(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = re.sub(r"^(layer\d\.\d+)\.conv1\.", r"\1.conv1.net.", k)
        out["module.base_model." + k] = v
    out["module.new_fc.weight"] = torch.randn(400, 2048)
    out["module.new_fc.bias"] = torch.randn(400)
    return {"epoch": 50, "arch": "resnet50", "state_dict": out, "best_prec1": 74.1}


def _mmaction2_file(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "conv1":
            k = "conv1.conv." + ".".join(parts[1:])
        elif parts[0] == "bn1":
            k = "conv1.bn." + ".".join(parts[1:])
        elif parts[2] == "downsample":
            kind = {"0": "conv", "1": "bn"}[parts[3]]
            k = ".".join([*parts[:3], kind, *parts[4:]])
        else:
            n = parts[2][-1]
            inner = "conv.net" if parts[2] == "conv1" else "conv"
            kind = inner if parts[2].startswith("conv") else "bn"
            k = ".".join([*parts[:2], f"conv{n}", kind, *parts[3:]])
        out["backbone." + k] = v
    out["cls_head.fc_cls.weight"] = torch.randn(400, 2048)
    out["cls_head.fc_cls.bias"] = torch.randn(400)
    out["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    return {"meta": {"epoch": 50, "mmaction_version": "1.0.0"}, "state_dict": out}


def _ig65m_file(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    return {**sd, "fc.weight": torch.randn(400, 512), "fc.bias": torch.randn(400)}


def _tsp_file(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    model = {"features." + k: v for k, v in sd.items()}
    model |= {
        "fc1.weight": torch.randn(200, 512),
        "fc1.bias": torch.randn(200),
        "fc2.weight": torch.randn(2, 1024),
        "fc2.bias": torch.randn(2),
    }
    return {"model": model, "optimizer": {"state": {}}, "epoch": 5}


LAYOUT_CASES: list[
    tuple[str, str, Callable[[dict[str, torch.Tensor]], dict[str, object]], str]
] = [
    ("tsm_r50", "torchvision", _tv_resnet_file, "layer1.0.conv1.weight"),
    ("tsm_r50", "tsm", _tsm_repo_file, "module.base_model.layer1.0.conv1.net.weight"),
    ("tsm_r50", "mmaction2", _mmaction2_file, "backbone.layer1.0.conv1.conv.net.weight"),
    ("r2plus1d_34", "torchvision", _ig65m_file, "layer1.0.conv1.0.0.weight"),
    ("r2plus1d_34", "tsp", _tsp_file, "features.layer1.0.conv1.0.0.weight"),
]


def _inner(obj: dict[str, object]) -> dict[str, torch.Tensor]:
    for entry in ("state_dict", "model"):
        if entry in obj:
            return obj[entry]  # type: ignore[return-value]
    return obj  # type: ignore[return-value]


def _round_trip(
    name: str,
    layout: str,
    public: dict[str, object] | Path,
    source: nn.Module,
    requested: tuple[str, ...] = ("auto",),
    opts: dict[str, Any] | None = None,
) -> None:
    x = _snippets(2, seed=3)
    with torch.no_grad():
        expected = source(x)
    for layout_arg in requested:
        fresh = ENCODERS[name](**(opts or {})).eval()
        report = load_pretrained(fresh, public, layout=layout_arg)  # type: ignore[arg-type]
        assert report.layout == layout
        assert report.missing == () and report.unexpected == ()
        assert len(report.loaded) == len(fresh.state_dict())
        assert any(k.split(".")[-2] in ("fc", "new_fc", "fc1", "fc_cls") for k in report.ignored)
        with torch.no_grad():
            assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize(("name", "layout", "to_file", "example_key"), LAYOUT_CASES)
def test_checkpoint_round_trip_in_public_layout(
    name: str,
    layout: str,
    to_file: Callable[[dict[str, torch.Tensor]], dict[str, object]],
    example_key: str,
    tsm: TSMResNet50,
) -> None:
    # In memory and with one block per R(2+1)D stage, to stay fast; the slow test below sends
    # the full-size models through torch.save / torch.load.
    opts = {"layers": (1, 1, 1, 1)} if name == "r2plus1d_34" else {}
    source = tsm if name == "tsm_r50" else _randomise(R2Plus1D34(**opts), 2)  # type: ignore[arg-type]
    public = to_file(source.state_dict())
    assert example_key in _inner(public)
    _round_trip(name, layout, public, source, opts=opts)
    # Naming the layout explicitly gives the same conversion as detecting it.
    flat = _inner(public)
    auto = convert_state_dict(source, flat)
    assert auto[1] == layout
    explicit = convert_state_dict(source, flat, layout=layout)  # type: ignore[arg-type]
    assert explicit[0].keys() == auto[0].keys()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "layout", "to_file", "example_key"), LAYOUT_CASES)
def test_checkpoint_round_trip_through_files(
    name: str,
    layout: str,
    to_file: Callable[[dict[str, torch.Tensor]], dict[str, object]],
    example_key: str,
    tmp_path: Path,
    tsm: TSMResNet50,
    r2p1d: R2Plus1D34,
) -> None:
    source = {"tsm_r50": tsm, "r2plus1d_34": r2p1d}[name]
    path = tmp_path / "ckpt.pth"
    torch.save(to_file(source.state_dict()), path)
    _round_trip(name, layout, path, source, requested=("auto", layout))


def test_checkpoint_file_loads_via_build_encoder(tmp_path: Path) -> None:
    small = _randomise(R2Plus1D34(layers=(1, 1, 1, 1)), 7)
    path = tmp_path / "r2plus1d_34-tsp.pth"
    torch.save(_tsp_file(small.state_dict()), path)
    assert set(read_state_dict(path)) == set(_inner(_tsp_file(small.state_dict())))
    built = build_encoder("r2plus1d_34", layers=(1, 1, 1, 1), weights=path).eval()
    x = _snippets(1, seed=4)
    with torch.no_grad():
        assert torch.equal(built(x), small(x))


def test_checkpoint_loads_into_frozen_encoder(tsm: TSMResNet50) -> None:
    x = _snippets(1, seed=4)
    with torch.no_grad():
        expected = tsm(x)
    frozen = freeze_encoder(TSMResNet50(), frozen_stages=2)
    report = load_pretrained(frozen, _inner(_tsm_repo_file(tsm.state_dict())))
    assert all("num_batches_tracked" not in k for k in report.loaded)
    assert sum("num_batches_tracked" in k for k in report.ignored) == 53
    with torch.no_grad():
        # FrozenBatchNorm computes x * scale + shift: equal up to rounding, in training mode too.
        torch.testing.assert_close(frozen.train()(x), expected, rtol=1e-4, atol=1e-5)
    # And back: a frozen encoder's own state dict loads into an unfrozen one.
    plain = TSMResNet50().eval()
    assert load_pretrained(plain, frozen.state_dict(), layout="native").missing == ()
    with torch.no_grad():
        assert torch.equal(plain(x), expected)


def test_strictness_and_clear_errors(tmp_path: Path) -> None:
    enc = R2Plus1D34(layers=(1, 1, 1, 1))
    sd = enc.state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("layer4")}
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['layer4.*unexpected keys \['extra"):
        load_pretrained(enc, partial)
    report = load_pretrained(enc, partial, strict=False)
    assert report.unexpected == ("extra.weight",)
    assert all(k.startswith("layer4") for k in report.missing) and report.missing
    wrong = dict(sd)
    wrong["stem.0.weight"] = torch.zeros(45, 3, 3, 7, 7)
    with pytest.raises(ValueError, match=r"stem.0.weight: checkpoint \(45, 3, 3, 7, 7\)"):
        load_pretrained(enc, wrong, strict=False)
    with pytest.raises(ValueError, match="layout='mmaction2' is not supported.*'tsp'"):
        load_pretrained(enc, sd, layout="mmaction2")
    with pytest.raises(ValueError, match="no key of the checkpoint matches"):
        load_pretrained(enc, {"foo.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    # A pickled object beyond tensors is refused by weights_only=True, with the way out.
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": _Opaque()}, path)
    with pytest.raises(ValueError, match="weights_only=True refuses"):
        read_state_dict(path)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="found no tensors"):
        read_state_dict(tmp_path / "empty.pth")


class _Opaque:
    pass


# --------------------------------------------------------------------------- freezing, registry


@pytest.mark.parametrize(
    ("name", "opts", "stem_param", "frozen_param", "free_param"),
    [
        ("tsm_r50", {}, "conv1.weight", "layer2.3.conv3.weight", "layer3.0.conv1.weight"),
        (
            "r2plus1d_34",
            {"layers": (1, 1, 1, 1)},
            "stem.0.weight",
            "layer2.0.conv2.0.3.weight",
            "layer3.0.conv1.0.0.weight",
        ),
        ("small3d", {}, "stem.0.weight", "layer2.conv2.weight", "layer3.conv1.weight"),
    ],
)
def test_freeze_encoder_as_in_the_paper(
    name: str, opts: dict[str, object], stem_param: str, frozen_param: str, free_param: str
) -> None:
    enc = build_encoder(name, **opts)  # type: ignore[arg-type]
    assert all(p.requires_grad for p in enc.parameters())  # built untouched
    enc = freeze_encoder(enc)  # frozen_stages=2, frozen BatchNorm
    grads = {n: p.requires_grad for n, p in enc.named_parameters()}
    assert not grads[stem_param] and not grads[frozen_param] and grads[free_param]
    assert training_batchnorms(enc.train()) == []
    if name != "small3d":
        assert any(isinstance(m, FrozenBatchNorm) for m in enc.modules())
    # Idempotent, and callable again after the norm layers are gone.
    freeze_encoder(enc, frozen_stages=3)
    assert not dict(enc.named_parameters())[free_param].requires_grad


def test_stage_prefixes_follow_mmaction2_frozen_stages() -> None:
    enc = TSMResNet50()
    assert enc.stage_prefixes(-1) == []
    assert enc.stage_prefixes(0) == ["conv1", "bn1"]
    assert enc.stage_prefixes(2) == ["conv1", "bn1", "layer1", "layer2"]
    with pytest.raises(ValueError, match="frozen_stages=5 is out of range"):
        enc.stage_prefixes(5)
    with pytest.raises(TypeError, match="frozen_stages must be an int"):
        enc.stage_prefixes(True)


def test_build_encoder_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown encoder 'i3d'.*'r2plus1d_34', 'small3d'"):
        build_encoder("i3d")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['depth'\].*widths"):
        build_encoder("small3d", depth=3)
    with pytest.raises(TypeError, match="freeze_encoder expects an encoder"):
        freeze_encoder(nn.Linear(2, 2))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "module", ["", ".small3d", ".tsm", ".r2plus1d", ".checkpoints", ".videomae"]
)
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module("sgs_tad.encoders" + module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", ["small3d", "tsm_r50"])
def test_sgs_at_ratio_one_gives_the_end_to_end_gradient(name: str) -> None:
    """The encoders are what SGS needs: per-snippet, deterministic, frozen BN where there is BN."""
    from sgs_tad.engine.sgs import SequentializedGradientSampler

    if name == "small3d":
        enc: VideoEncoder = Small3DCNN(widths=(8, 16, 32)).train()  # GroupNorm: no freezing
        shape: tuple[int, ...] = (3, 4, 16, 16)
    else:
        enc = freeze_encoder(_randomise(TSMResNet50(), 3), frozen_stages=3).train()
        shape = (3, 2, 16, 16)
    snippets = _snippets(6, seed=8, shape=shape).unsqueeze(0)  # [B=1, N=6, 3, L, H, W]
    weights = torch.randn(6, enc.out_channels, generator=torch.Generator().manual_seed(9))

    def loss_fn(feats: torch.Tensor) -> torch.Tensor:
        return (feats[0] * weights).sum()

    loss_fn(enc(snippets[0]).unsqueeze(0)).backward()
    plain = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad(set_to_none=True)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=4, ratio=1.0)
    sgs.step(snippets, loss_fn)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert sorted(plain) == sorted(trainable)
    for n, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-5, msg=n)
