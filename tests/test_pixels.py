"""uint8 snippets: normalisation on the encoder's device, pinning, SGS with uint8 sources."""

from __future__ import annotations

import threading

import pytest
import torch

from sgs_tad import EndToEnd, SequentializedGradientSampler, TensorSource
from sgs_tad.encoders import R2Plus1D34, Small3DCNN, TSMResNet50, VideoEncoder
from sgs_tad.engine import pixels
from sgs_tad.engine.microbatch import MicroBatch
from sgs_tad.engine.pixels import IMAGENET_MEAN, IMAGENET_STD, normalise_pixels, pin_if_cuda


def _pixels(m: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (m, *shape), generator=g, dtype=torch.uint8)


def _float_path(x: torch.Tensor) -> torch.Tensor:
    """What a float32 source delivered before uint8 existed: (x / 255 - mean) / std."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return (x.float() / 255.0 - mean) / std


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: Small3DCNN(widths=(8, 16, 32)), (3, 4, 16, 16)),
        (lambda: TSMResNet50(), (3, 2, 16, 16)),
        (lambda: R2Plus1D34(), (3, 2, 16, 16)),
    ],
    ids=["small3d", "tsm_r50", "r2plus1d_34"],
)
def test_builtin_encoders_take_uint8_and_match_the_float_path(make, shape) -> None:
    torch.manual_seed(0)
    enc: VideoEncoder = make().eval()
    x = _pixels(2, shape)
    with torch.no_grad():
        from_uint8 = enc(x)
        from_float = enc(_float_path(x))
    assert from_uint8.dtype == torch.float32
    torch.testing.assert_close(from_uint8, from_float)  # within float rounding
    # float input is passed through untouched: normalised once, not twice
    with torch.no_grad():
        assert torch.equal(enc(enc.normalise_input(x)), from_uint8)


def test_input_normalisation_is_configurable_and_checked() -> None:
    enc = Small3DCNN(widths=(8, 8))
    x = _pixels(1, (3, 2, 4, 4))
    enc.set_input_normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    expected = (x.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(enc.normalise_input(x), expected)
    assert enc.normalise_input(expected) is expected
    with pytest.raises(ValueError, match=r"std finite and > 0"):
        enc.set_input_normalisation((0.5, 0.5, 0.5), (0.0, 1.0, 1.0))
    assert "input" not in "".join(enc.state_dict())  # checkpoints are unchanged


def test_normalise_pixels_refuses_float() -> None:
    with pytest.raises(TypeError, match="uint8"):
        normalise_pixels(torch.zeros(1, 3, 1, 1), IMAGENET_MEAN, IMAGENET_STD)


def test_sgs_at_ratio_one_with_uint8_sources_equals_end_to_end() -> None:
    """Every named parameter's gradient, SGS over uint8 sources against plain backprop."""
    videos = [_pixels(7, (3, 4, 12, 12), seed=1), _pixels(5, (3, 4, 12, 12), seed=2)]
    weights = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(3))

    def loss_fn(feats: torch.Tensor) -> torch.Tensor:
        return (feats * weights[:, : feats.shape[1]]).sum()

    def run(engine_of) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        enc = Small3DCNN(widths=(8, 16)).train()
        engine = engine_of(enc)
        sources = [TensorSource(v) for v in videos]
        feats = engine.encode(sources)
        loss_fn(feats).backward()
        engine.backward(sources, feats)
        return {n: p.grad.clone() for n, p in enc.named_parameters()}

    plain = run(lambda e: EndToEnd(e))
    sgs = run(lambda e: SequentializedGradientSampler(e, micro_batch_size=3, ratio=1.0))
    assert sorted(plain) == sorted(sgs)
    for name in plain:
        torch.testing.assert_close(sgs[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_pin_if_cuda_without_cuda_is_the_identity() -> None:
    x = torch.zeros(3)
    if not torch.cuda.is_available():
        assert pin_if_cuda(x) is x


def test_pin_if_cuda_pins_cpu_tensors_when_cuda_is_there(monkeypatch) -> None:
    pinned: list[torch.Tensor] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        pinned.append(self)
        return self.clone()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    x = torch.arange(4, dtype=torch.uint8)
    out = pin_if_cuda(x)
    assert pinned == [x] and out is not x and torch.equal(out, x)


class _RecordingSource:
    """A lazy uint8 source that pins its output with the library's helper, recording where."""

    def __init__(self, pixels: torch.Tensor, threads: list[str]) -> None:
        self.pixels = pixels
        self.threads = threads

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        return pixels.pin_if_cuda(self.pixels[indices])


def test_sources_pin_in_the_prefetch_thread(monkeypatch) -> None:
    threads: list[str] = []
    real = pixels.pin_if_cuda

    def recording(x: torch.Tensor) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return real(x)

    monkeypatch.setattr(pixels, "pin_if_cuda", recording)
    torch.manual_seed(0)
    enc = Small3DCNN(widths=(8, 8)).train()
    sources = [_RecordingSource(_pixels(6, (3, 2, 8, 8)), threads)]
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, ratio=1.0, prefetch=True)
    feats = sgs.encode(sources)
    feats.sum().backward()
    sgs.backward(sources, feats)
    # Phase 1's three micro-batches are all gathered (and pinned) off the main thread; the
    # engine gathers a lone remaining micro-batch inline, so one main-thread call may remain.
    assert all(name.startswith("sgs-prefetch") for name in threads[:3])
    assert threads.count("MainThread") <= 1


def test_gather_keeps_pinned_parts_pinned(monkeypatch) -> None:
    """Concatenating several videos' pinned snippets allocates the result pinned too."""
    calls: list[dict[str, object]] = []
    real_empty = torch.empty

    def empty(*shape, **kw):
        calls.append(dict(kw))
        kw.pop("pin_memory", None)  # no CUDA here: record the request, allocate plainly
        return real_empty(*shape, **kw)

    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    monkeypatch.setattr(torch, "empty", empty)
    batch = MicroBatch(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    out = batch.gather([TensorSource(torch.zeros(2, 3)), TensorSource(torch.ones(1, 3))])
    assert out.shape == (3, 3) and calls and calls[-1].get("pin_memory") is True
