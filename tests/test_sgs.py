"""SequentializedGradientSampler: gradient equivalence, accumulation, AMP, RNG replay, counts."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import sgs_tad
from sgs_tad import SequentializedGradientSampler, TensorSource
from sgs_tad.engine.microbatch import num_sampled


class Encoder(nn.Module):
    """A small conv encoder [M, 2, 6, 6] -> [M, C], with optional dropout, counting calls."""

    def __init__(self, channels: int = 5, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 36, channels)
        self.calls: list[int] = []
        self.phases: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        self.phases.append((sgs_tad.is_encoding(), sgs_tad.is_recomputing()))
        h = torch.relu(self.norm(self.conv(x)))
        return self.fc(self.drop(h.flatten(1)))


class Detector(nn.Module):
    """A temporal conv detector over [B, N, C] with a masked loss."""

    def __init__(self, channels: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, 3, 3, padding=1)
        self.head = nn.Linear(3, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(feats.transpose(1, 2))).transpose(1, 2)
        return self.head(h).squeeze(-1)  # [B, N]


def loss_of(detector: nn.Module, feats: torch.Tensor, mask: torch.Tensor | None = None):
    scores = detector(feats)
    target = torch.linspace(-1, 1, scores.shape[1], dtype=scores.dtype)
    err = (scores - target).square()
    if mask is not None:
        err = err * mask
    return err.sum() / err.shape[0]


def models(dtype=torch.float64, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return Encoder(dropout=dropout).to(dtype), Detector().to(dtype)


def grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for i, m in enumerate(modules):
        for name, p in m.named_parameters():
            out[f"{i}.{name}"] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
    return out


def end_to_end(encoder, detector, snippets, feature_mask=None, scale=None):
    """Plain backprop; feature_mask [B, N] keeps only some feature gradients (times scale)."""
    b, n = snippets.shape[:2]
    feats = encoder(snippets.flatten(0, 1)).view(b, n, -1)
    if feature_mask is not None:
        keep = feature_mask.unsqueeze(-1).to(feats.dtype)
        if scale is not None:
            keep = keep * scale.view(-1, 1, 1)
        feats = feats * keep + (feats * (1 - keep)).detach()
    loss_of(detector, feats).backward()


def sgs_grads(encoder, detector, snippets, **options):
    sgs = SequentializedGradientSampler(encoder, **options)
    feats = sgs.encode(snippets)
    loss_of(detector, feats).backward()
    sgs.backward(snippets, feats)
    return sgs, feats


def assert_same_grads(a, b, rtol):
    assert a.keys() == b.keys()
    for name in a:
        err = (a[name] - b[name]).norm() / b[name].norm().clamp_min(1e-30)
        assert err <= rtol, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("k1", [None, 8])
@pytest.mark.parametrize("k", [1, 3, 4, 16])
def test_ratio_one_equals_end_to_end_float64(k, k1):
    snippets = torch.randn(2, 7, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    end_to_end(enc, det, snippets)
    reference = grads(enc, det)
    enc, det = models()
    sgs_grads(enc, det, snippets, micro_batch_size=k, encode_batch_size=k1, ratio=1.0)
    assert_same_grads(grads(enc, det), reference, 1e-10)


def test_ratio_one_equals_end_to_end_float32():
    snippets = torch.randn(3, 9, 2, 6, 6)
    enc, det = models(torch.float32)
    end_to_end(enc, det, snippets)
    reference = grads(enc, det)
    enc, det = models(torch.float32)
    sgs_grads(enc, det, snippets, micro_batch_size=4, ratio=1.0)
    assert_same_grads(grads(enc, det), reference, 1e-5)


@pytest.mark.parametrize("k1", [None, 7])
@pytest.mark.parametrize("grad_scale", ["none", "unbiased"])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.75])
def test_partial_ratio_equals_masked_end_to_end(ratio, grad_scale, k1):
    snippets = torch.randn(2, 10, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    gen = torch.Generator().manual_seed(3)
    sgs, _ = sgs_grads(enc, det, snippets, micro_batch_size=3, encode_batch_size=k1,
                       ratio=ratio, grad_scale=grad_scale, generator=gen)  # fmt: skip
    got = grads(enc, det)
    # Replay the same draw to learn which snippets were sampled.
    from sgs_tad.samplers import make_sampler

    replay = torch.Generator().manual_seed(3)
    n = num_sampled(10, ratio)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    for v in range(2):
        idx = make_sampler("random")(10, n, generator=replay) if n < 10 else torch.arange(10)
        mask[v, idx] = True
    assert sgs.stats.snippets_sampled == 2 * n
    scale = torch.full((2,), 10 / n, dtype=torch.float64) if grad_scale == "unbiased" else None
    enc, det = models()
    end_to_end(enc, det, snippets, feature_mask=mask, scale=scale)
    assert_same_grads(got, grads(enc, det), 1e-10)


def test_ratio_zero_is_frozen_encoder():
    snippets = torch.randn(2, 5, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs, _ = sgs_grads(enc, det, snippets, micro_batch_size=2, ratio=0.0)
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.grad is not None for p in det.parameters())
    assert sgs.stats.recompute_calls == 0


@pytest.mark.parametrize("k1", [None, 16])
@pytest.mark.parametrize("ratio", [0.3, 1.0])
def test_dropout_masks_are_replayed(ratio, k1):
    """With dropout, the recompute must see the phase-1 masks (the determinism check inside
    backward compares the recomputed features with phase 1's), whatever the phase-1 size."""
    torch.manual_seed(0)
    snippets = torch.randn(2, 6, 2, 6, 6, dtype=torch.float64)
    enc, det = models(dropout=0.5)
    torch.manual_seed(123)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=4, encode_batch_size=k1, ratio=ratio)
    feats = sgs.encode(snippets)  # determinism check inside backward compares features
    loss_of(det, feats).backward()
    before = torch.get_rng_state()
    sgs.backward(snippets, feats)
    assert torch.equal(before, torch.get_rng_state()), "phase 3 advanced the global RNG"
    assert all(p.grad is not None for p in enc.parameters())


def test_dropout_ratio_one_equals_end_to_end_with_same_masks():
    snippets = torch.randn(1, 4, 2, 6, 6, dtype=torch.float64)
    enc, det = models(dropout=0.5)
    # K = N: one micro-batch, so phase 1 consumes the RNG exactly as a plain forward does.
    torch.manual_seed(7)
    end_to_end(enc, det, snippets)
    reference = grads(enc, det)
    enc, det = models(dropout=0.5)
    torch.manual_seed(7)
    sgs_grads(enc, det, snippets, micro_batch_size=4, ratio=1.0)
    assert_same_grads(grads(enc, det), reference, 1e-10)


def test_without_rng_replay_dropout_fails_determinism_check():
    snippets = torch.randn(1, 6, 2, 6, 6, dtype=torch.float64)
    enc, det = models(dropout=0.5)
    with pytest.raises(RuntimeError, match="determinism check failed.*BatchNorm"):
        sgs_grads(enc, det, snippets, micro_batch_size=2, ratio=1.0, preserve_rng_state=False)


def test_gradient_accumulation_two_calls_equal_one_batch():
    snippets = torch.randn(2, 6, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs_grads(enc, det, snippets, micro_batch_size=4, ratio=1.0)
    together = grads(enc, det)
    enc, det = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=4, ratio=1.0)
    for v in range(2):
        part = snippets[v : v + 1]
        feats = sgs.encode(part)
        (loss_of(det, feats) / 2).backward()
        sgs.backward(part, feats)
    assert_same_grads(grads(enc, det), together, 1e-10)


def test_list_input_pads_and_masks():
    torch.manual_seed(0)
    videos = [torch.randn(n, 2, 6, 6, dtype=torch.float64) for n in (3, 7, 5)]
    enc, det = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=4, ratio=1.0)
    feats = sgs.encode(videos)
    mask = sgs.mask(feats)
    assert feats.shape == (3, 7, 5)
    assert mask.sum(1).tolist() == [3, 7, 5]
    assert sgs.lengths(feats) == [3, 7, 5]
    assert torch.all(feats[0, 3:] == 0)
    with torch.no_grad():
        for v, x in enumerate(videos):
            torch.testing.assert_close(feats[v, : len(x)], enc(x))
    loss_of(det, feats, mask).backward()
    sgs.backward(videos, feats)
    got = grads(enc)
    # Reference: each video end to end, summed (the masked loss separates videos).
    enc2, det2 = models()
    for x in videos:
        f = enc2(x).unsqueeze(0)
        padded = torch.cat([f, f.new_zeros(1, 7 - len(x), 5)], 1)
        m = torch.zeros(1, 7, dtype=torch.bool)
        m[0, : len(x)] = True
        (loss_of(det2, padded, m) / 3).backward()
    assert_same_grads(got, grads(enc2), 1e-10)


class CountingSource:
    """A lazy source that records every request (as a decoder would see them)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        self.requests: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.data)

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        self.requests.append(indices.tolist())
        return self.data[indices]


def test_lazy_source_decodes_only_micro_batches():
    torch.manual_seed(0)
    data = [torch.randn(n, 2, 6, 6, dtype=torch.float64) for n in (9, 4)]
    sources = [CountingSource(d) for d in data]
    enc, det = models()
    # (The one-off independence check would add a request of its own.)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=3, ratio=1.0,
                                        independence_check=False)  # fmt: skip
    feats = sgs.encode(sources)
    assert all(len(r) <= 3 for s in sources for r in s.requests)
    assert sorted(i for r in sources[0].requests for i in r) == list(range(9))
    loss_of(det, feats, sgs.mask(feats)).backward()
    sgs.backward(sources, feats)
    via_sources = grads(enc)
    enc, det = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=3, ratio=1.0)
    feats = sgs.encode(data)
    loss_of(det, feats, sgs.mask(feats)).backward()
    sgs.backward(data, feats)
    assert_same_grads(via_sources, grads(enc), 1e-12)


@pytest.mark.parametrize(
    ("lengths", "k", "k1", "ratio"),
    [((7, 5), 4, None, 0.3), ((10,), 3, None, 1.0), ((1, 2, 9), 2, None, 0.5),
     ((7, 5), 4, 16, 0.3), ((1, 2, 9), 2, 5, 0.5), ((10,), 3, 8, 1.0)],
)  # fmt: skip
def test_encoder_call_counts(lengths, k, k1, ratio):
    videos = [torch.randn(n, 2, 6, 6) for n in lengths]
    enc, det = models(torch.float32)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=k, encode_batch_size=k1,
                                        ratio=ratio, independence_check=False)  # fmt: skip
    feats = sgs.encode(videos)
    total = sum(lengths)
    sampled = sum(num_sampled(n, ratio) for n in lengths)
    # Phase 1: the sampled snippets in micro-batches of K (those phase 3 replays), then the
    # others in micro-batches of the phase-1 size.
    assert len(enc.calls) == -(-sampled // k) + -(-(total - sampled) // (k1 or k))
    assert enc.calls[: -(-sampled // k)] == [min(k, sampled - i) for i in range(0, sampled, k)]
    assert all(m <= max(k, k1 or k) for m in enc.calls) and sum(enc.calls) == total
    assert all(p == (True, False) for p in enc.phases)
    enc.calls.clear()
    enc.phases.clear()
    loss_of(det, feats, sgs.mask(feats)).backward()
    sgs.backward(videos, feats)
    assert len(enc.calls) == -(-sampled // k) == sgs.stats.recompute_calls
    assert all(m <= k for m in enc.calls)
    assert all(p == (False, True) for p in enc.phases)
    assert (sgs_tad.is_encoding(), sgs_tad.is_recomputing()) == (False, False)


def test_num_sampled_is_at_least_one():
    assert num_sampled(1, 0.01) == 1
    assert num_sampled(10, 0.3) == 3
    assert num_sampled(128, 0.3) == 39
    assert num_sampled(5, 0.0) == 0


def test_encode_keeps_no_graph_or_activations():
    enc, _ = models(torch.float32)
    captured: list[weakref.ref] = []

    def hook(module, inputs, output):
        captured.append(weakref.ref(output))

    enc.conv.register_forward_hook(hook)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        sgs = SequentializedGradientSampler(enc, micro_batch_size=2, ratio=1.0,
                                            independence_check=False)  # fmt: skip
        feats = sgs.encode(torch.randn(1, 6, 2, 6, 6))
    gc.collect()
    assert saved == []
    assert feats.grad_fn is None and feats.is_leaf and feats.requires_grad
    assert len(captured) == 3 and all(ref() is None for ref in captured)


def test_bfloat16_autocast_matches_phase_one():
    torch.manual_seed(0)
    snippets = torch.randn(2, 6, 2, 6, 6)
    enc, det = models(torch.float32)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=4, ratio=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = sgs.encode(snippets)
        loss = loss_of(det, feats)
    assert feats.dtype == torch.bfloat16
    loss.backward()
    # Outside autocast: phase 3 must re-enter it, or the determinism check fails / dtypes differ.
    sgs.backward(snippets, feats)
    got = grads(enc)
    enc2, det2 = models(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        end_to_end(enc2, det2, snippets)
    ref = grads(enc2)
    assert_same_grads(got, ref, 2e-2)


def test_gradscaler_no_double_scaling():
    torch.manual_seed(0)
    snippets = torch.randn(1, 5, 2, 6, 6)
    enc, det = models(torch.float32)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, ratio=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sgs.step(snippets, lambda f: loss_of(det, f), scaler=scaler)
    scaled = grads(enc)
    enc2, det2 = models(torch.float32)
    end_to_end(enc2, det2, snippets)
    ref = grads(enc2)
    assert_same_grads({k: v / 1024 for k, v in scaled.items()}, ref, 1e-5)


def test_step_returns_detached_loss_and_accumulates():
    snippets = torch.randn(1, 4, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, ratio=1.0)
    loss = sgs.step(snippets, lambda f: loss_of(det, f))
    assert loss.grad_fn is None and loss.ndim == 0
    once = grads(enc)
    sgs.step(snippets, lambda f: loss_of(det, f))
    assert_same_grads(grads(enc), {k: 2 * v for k, v in once.items()}, 1e-12)


def test_sampling_is_reproducible_and_leaves_global_rng_alone():
    snippets = torch.randn(2, 12, 2, 6, 6)

    def run(seed):
        enc, det = models(torch.float32)
        sgs = SequentializedGradientSampler(
            enc, micro_batch_size=3, ratio=0.25, generator=torch.Generator().manual_seed(seed)
        )
        before = torch.get_rng_state()
        feats = sgs.encode(snippets)
        assert torch.equal(before, torch.get_rng_state())
        loss_of(det, feats).backward()
        sgs.backward(snippets, feats)
        return grads(enc)

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_state_dict_round_trip():
    enc, _ = models(torch.float32)
    sgs = SequentializedGradientSampler(enc, generator=torch.Generator().manual_seed(5))
    state = sgs.state_dict()
    first = torch.rand(3, generator=sgs.generator)
    sgs.load_state_dict(state)
    assert torch.equal(first, torch.rand(3, generator=sgs.generator))


def test_feature_guided_sampler_receives_phase_one_features():
    seen = []

    class Guided:
        requires_features = True

        def __call__(self, num_items, num_samples, *, features=None, generator=None):
            seen.append(features.clone())
            return torch.arange(num_samples)

    snippets = torch.randn(2, 6, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=4, ratio=0.5, sampler=Guided())
    feats = sgs.encode(snippets)
    loss_of(det, feats).backward()
    sgs.backward(snippets, feats)
    assert len(seen) == 2 and seen[0].shape == (6, 5)
    torch.testing.assert_close(seen[1], feats.detach()[1])
    assert sgs.stats.snippets_sampled == 6


@pytest.mark.parametrize("name", ["fps", "kdpp", "picky"])
def test_feature_guided_picks_get_exactly_the_masked_end_to_end_gradient(name):
    """Indices from a feature-guided sampler (any order, not a prefix) map to their snippets."""
    from sgs_tad.samplers import make_sampler

    class Picky:  # the snippets with the largest feature norm, largest first
        requires_features = True

        def __call__(self, num_items, num_samples, *, features=None, generator=None):
            return features.norm(dim=1).argsort(descending=True)[:num_samples]

    sampler = Picky() if name == "picky" else make_sampler(name)
    snippets = torch.randn(2, 7, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    gen = torch.Generator().manual_seed(4)
    sgs, feats = sgs_grads(
        enc, det, snippets, micro_batch_size=3, ratio=0.3, sampler=sampler, generator=gen
    )
    got = grads(enc, det)
    replay = torch.Generator().manual_seed(4)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    n = num_sampled(7, 0.3)
    for v in range(2):
        idx = sampler(7, n, features=feats.detach()[v], generator=replay)
        mask[v, idx] = True
    assert int(mask.sum()) == sgs.stats.snippets_sampled == 2 * n
    assert mask[:, :n].sum() < 2 * n  # not simply the first snippets
    enc, det = models()
    end_to_end(enc, det, snippets, feature_mask=mask)
    assert_same_grads(got, grads(enc, det), 1e-10)


# ----------------------------------------------------------------------------- bad input


def test_training_batchnorm_is_rejected_with_helper_hint():
    enc = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten())
    with pytest.raises(ValueError, match="freeze_norm_layers"):
        SequentializedGradientSampler(enc)
    frozen = sgs_tad.freeze_norm_layers(enc)
    SequentializedGradientSampler(frozen)
    SequentializedGradientSampler(enc.eval())
    SequentializedGradientSampler(enc.train(), norm_policy="allow")
    assert enc.training  # the library never flipped it


def test_frozen_batchnorm_matches_eval_batchnorm():
    bn = nn.BatchNorm3d(4)
    bn.running_mean.uniform_()
    bn.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
    x = torch.randn(2, 4, 3, 5, 5)
    frozen = sgs_tad.FrozenBatchNorm.from_batchnorm(bn).train()
    torch.testing.assert_close(frozen(x), bn.eval()(x))


def test_freeze_stages():
    enc, _ = models(torch.float32)
    names = sgs_tad.freeze_stages(enc, ["conv"])
    assert names == ["conv.weight", "conv.bias"]
    assert not enc.conv.weight.requires_grad and enc.fc.weight.requires_grad
    with pytest.raises(ValueError, match="no parameter.*'layer9'"):
        sgs_tad.freeze_stages(enc, ["layer9"])


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio must be in \\[0, 1\\]"):
        SequentializedGradientSampler(models()[0], ratio=ratio)


@pytest.mark.parametrize("k", [0, -3])
def test_bad_micro_batch_size(k):
    with pytest.raises(ValueError, match="micro_batch_size must be >= 1"):
        SequentializedGradientSampler(models()[0], micro_batch_size=k)


def test_bad_encoder_output_shape():
    enc = nn.Conv2d(2, 3, 1)  # returns a feature map
    sgs = SequentializedGradientSampler(enc)
    with pytest.raises(ValueError, match="pool="):
        sgs.encode(torch.randn(1, 4, 2, 6, 6))
    sgs = SequentializedGradientSampler(enc, pool=lambda x: x.flatten(2).mean(-1))
    assert sgs.encode(torch.randn(1, 4, 2, 6, 6)).shape == (1, 4, 3)


def test_wrong_number_of_rows_from_encoder():
    class Bad(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:1]

    with pytest.raises(ValueError, match=r"\[2, C\]"):
        SequentializedGradientSampler(Bad(), micro_batch_size=2).encode(torch.randn(1, 4, 3))


def test_foreign_feats_rejected():
    enc, det = models(torch.float32)
    sgs = SequentializedGradientSampler(enc)
    snippets = torch.randn(1, 4, 2, 6, 6)
    feats = sgs.encode(snippets)
    loss_of(det, feats).backward()
    with pytest.raises(ValueError, match="did not come from encode"):
        sgs.backward(snippets, feats.detach().requires_grad_())
    sgs.backward(snippets, feats)
    with pytest.raises(ValueError, match="already called"):
        sgs.backward(snippets, feats)


def test_missing_feature_grad_says_why():
    enc, det = models(torch.float32)
    sgs = SequentializedGradientSampler(enc)
    snippets = torch.randn(1, 4, 2, 6, 6)
    feats = sgs.encode(snippets)
    loss_of(det, feats.detach()).backward()
    with pytest.raises(RuntimeError, match="feats.grad is None.*no_grad"):
        sgs.backward(snippets, feats)


def test_nonfinite_feature_grad():
    enc, _ = models(torch.float32)
    snippets = torch.randn(1, 4, 2, 6, 6)
    for policy in ("raise", "skip"):
        sgs = SequentializedGradientSampler(enc, ratio=1.0, on_nonfinite_grad=policy)
        feats = sgs.encode(snippets)
        (feats.sum() * float("inf")).backward()
        if policy == "raise":
            with pytest.raises(FloatingPointError, match="NaN/inf"):
                sgs.backward(snippets, feats)
        else:
            sgs.backward(snippets, feats)
            assert all(p.grad is None for p in enc.parameters())


def test_zero_snippet_video_and_mismatched_shapes():
    sgs = SequentializedGradientSampler(models()[0])
    with pytest.raises(ValueError, match="video 1 has zero snippets"):
        sgs.encode([torch.randn(3, 2, 6, 6), torch.randn(0, 2, 6, 6)])
    with pytest.raises(ValueError, match="video 1 has snippet shape"):
        sgs.encode([torch.randn(3, 2, 6, 6), torch.randn(3, 2, 5, 5)])
    with pytest.raises(TypeError, match="expected a tensor"):
        sgs.encode("video.mp4")
    with pytest.raises(TypeError, match="wrap it in a list"):
        sgs.encode(TensorSource(torch.randn(3, 2, 6, 6)))


def test_backward_with_other_snippets_rejected():
    enc, det = models(torch.float32)
    sgs = SequentializedGradientSampler(enc)
    feats = sgs.encode(torch.randn(1, 4, 2, 6, 6))
    loss_of(det, feats).backward()
    with pytest.raises(ValueError, match="same snippets"):
        sgs.backward(torch.randn(1, 5, 2, 6, 6), feats)


def test_unknown_sampler_name_lists_choices():
    with pytest.raises((ValueError, KeyError), match="random"):
        SequentializedGradientSampler(models()[0], sampler="nope")


def test_bad_sampler_output_is_reported():
    def broken(num_items, num_samples, *, features=None, generator=None):
        return torch.zeros(num_samples, dtype=torch.long)

    sgs = SequentializedGradientSampler(models()[0], ratio=0.5, sampler=broken)
    with pytest.raises(ValueError, match="distinct"):
        sgs.encode(torch.randn(1, 6, 2, 6, 6, dtype=torch.float64))
