"""The engine seam: EndToEnd against plain backprop, encode_features, and the Engine protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgs_tad import EndToEnd, Engine, SequentializedGradientSampler


def models(seed: int = 0, dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Dropout(dropout), nn.Tanh())
    return encoder.double(), nn.Linear(8, 1).double()


def loss_of(detector: nn.Module, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = detector(feats).squeeze(-1) * mask
    target = torch.linspace(-1, 1, feats.shape[1], dtype=feats.dtype)
    return (scores - target).square().sum()


def grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules)
            for n, p in m.named_parameters()}  # fmt: skip


def plain(encoder, detector, videos) -> dict[str, torch.Tensor]:
    """Reference: each video through the encoder in one call, padded by hand."""
    n_max = max(len(v) for v in videos)
    feats = torch.stack([nn.functional.pad(encoder(v), (0, 0, 0, n_max - len(v))) for v in videos])
    mask = torch.stack([torch.arange(n_max) < len(v) for v in videos])
    loss_of(detector, feats, mask).backward()
    return grads(encoder, detector)


@pytest.mark.parametrize(
    "options", [{}, {"micro_batch_size": 3}, {"micro_batch_size": 2, "checkpoint": True}]
)
def test_end_to_end_engine_equals_plain_backprop_for_every_parameter(options):
    videos = [torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(7, 2, 3, dtype=torch.float64)]
    reference = plain(*models(), videos)
    encoder, detector = models()
    engine = EndToEnd(encoder, **options)
    feats = engine.encode(videos)
    mask = torch.stack([torch.arange(7) < 5, torch.arange(7) < 7])
    assert torch.equal(feats.detach()[0, 5:], torch.zeros(2, 8, dtype=torch.float64))
    loss_of(detector, feats, mask).backward()
    engine.backward(videos, feats)  # nothing left to do
    got = grads(encoder, detector)
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value, rtol=1e-12, atol=1e-12, msg=name)


def test_sgs_at_ratio_one_equals_the_end_to_end_engine():
    videos = [torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(4, 2, 3, dtype=torch.float64)]
    results = []
    engines = (
        lambda e: EndToEnd(e),
        lambda e: SequentializedGradientSampler(e, micro_batch_size=3, ratio=1.0),
    )
    for engine_of in engines:
        encoder, detector = models()
        engine = engine_of(encoder)
        feats = engine.encode(videos)
        mask = torch.stack([torch.arange(6) < 6, torch.arange(6) < 4])
        loss_of(detector, feats, mask).backward()
        engine.backward(videos, feats)
        results.append(grads(encoder, detector))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-10, atol=1e-12, msg=name)


def test_encode_features_draws_no_sample_and_leaves_no_record():
    encoder, _ = models(dropout=0.0)
    sgs = SequentializedGradientSampler(
        encoder, micro_batch_size=2, encode_batch_size=5, ratio=0.5
    )
    state = sgs.generator.get_state()
    videos = torch.randn(2, 6, 2, 3, dtype=torch.float64)
    feats = sgs.encode_features(videos)
    assert not feats.requires_grad and feats.grad_fn is None
    assert torch.equal(sgs.generator.get_state(), state)
    assert len(sgs._records) == 0
    assert sgs.stats.encode_calls == 3  # 12 snippets at the phase-1 size 5
    with torch.no_grad():
        expected = encoder(videos.flatten(0, 1)).view(2, 6, -1)
    torch.testing.assert_close(feats, expected)
    with pytest.raises(ValueError, match="did not come from encode"):
        sgs.backward(videos, feats)


def test_both_engines_implement_the_protocol_and_say_whether_they_train():
    encoder, _ = models()
    assert isinstance(EndToEnd(encoder), Engine)
    assert isinstance(SequentializedGradientSampler(encoder), Engine)
    assert EndToEnd(encoder).trains_encoder
    assert SequentializedGradientSampler(encoder, ratio=0.3).trains_encoder
    assert not SequentializedGradientSampler(encoder, ratio=0.0).trains_encoder


def test_end_to_end_bad_options():
    encoder, _ = models()
    with pytest.raises(ValueError, match="checkpoint=True needs micro_batch_size"):
        EndToEnd(encoder, checkpoint=True)
    with pytest.raises(ValueError, match="micro_batch_size must be None"):
        EndToEnd(encoder, micro_batch_size=0)
    with pytest.raises(TypeError, match="nn.Module"):
        EndToEnd(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encode_batch_size must be .auto., None"):
        SequentializedGradientSampler(encoder, encode_batch_size=0)
