"""Kept phase-1 graphs, the phase-1 batch size and prefetching: exact gradients every way."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from sgs_tad import SequentializedGradientSampler, SnippetMixingError, SnippetReadError
from sgs_tad.engine.microbatch import num_sampled
from sgs_tad.samplers import make_sampler
from test_sgs import assert_same_grads, end_to_end, grads, loss_of, models


def sample_mask(lengths: list[int], ratio: float, seed: int) -> torch.Tensor:
    """The snippets the engine's random sampler draws with generator seed ``seed``."""
    return _mask_from(torch.Generator().manual_seed(seed).get_state(), lengths, ratio)


def run(enc, det, snippets, **options):
    sgs = SequentializedGradientSampler(enc, **options)
    feats = sgs.encode(snippets)
    loss_of(det, feats).backward()
    sgs.backward(snippets, feats)
    return sgs


# keep budget -> snippets kept, for 2 videos x 10 snippets, K = 3
@pytest.mark.parametrize(
    ("keep", "ratio", "kept"),
    [
        (0, 0.3, 0),
        (3, 0.3, 3),  # partial: one micro-batch of the two
        (5, 0.3, 3),  # a budget between micro-batches keeps whole ones only
        ("all", 0.3, 6),
        ("all", 1.0, 20),
        (9, 1.0, 9),
        ("1KB", 0.3, 0),  # smaller than one micro-batch's activations: measured, dropped
        ("64MB", 0.3, 6),
        ("64MB", 1.0, 20),
    ],
)
@pytest.mark.parametrize("k1", [None, 7])
def test_kept_graphs_give_the_masked_end_to_end_gradient(keep, ratio, kept, k1):
    snippets = torch.randn(2, 10, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = run(enc, det, snippets, micro_batch_size=3, encode_batch_size=k1, ratio=ratio,
              keep_graphs=keep, generator=torch.Generator().manual_seed(3))  # fmt: skip
    got = grads(enc, det)
    assert sgs.stats.snippets_kept == kept
    n = num_sampled(10, ratio)
    assert sgs.stats.snippets_sampled == 2 * n
    assert sgs.stats.snippets_recomputed == 2 * n - kept
    mask = sample_mask([10, 10], ratio, 3)
    enc, det = models()
    end_to_end(enc, det, snippets, feature_mask=mask if ratio < 1 else None)
    assert_same_grads(got, grads(enc, det), 1e-10)


def test_kept_graph_bytes_are_measured():
    snippets = torch.randn(1, 8, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = run(enc, det, snippets, micro_batch_size=4, ratio=1.0, keep_graphs="64MB")
    assert sgs.stats.snippets_kept == 8
    # The input, conv, norm and fc activations of 8 snippets: several KB in float64.
    assert 8 * 2 * 36 * 8 < sgs.stats.kept_bytes < 2**20


@pytest.mark.parametrize("keep", [4, "all"])
@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_kept_graphs_with_dropout_equal_the_replayed_recompute(keep, ratio):
    """Kept graphs use phase 1's own dropout masks; the recompute replays them: same grads."""
    snippets = torch.randn(2, 8, 2, 6, 6, dtype=torch.float64)
    out = []
    for budget in (0, keep):
        enc, det = models(dropout=0.5)
        torch.manual_seed(11)
        run(enc, det, snippets, micro_batch_size=2, ratio=ratio, keep_graphs=budget,
            generator=torch.Generator().manual_seed(5))  # fmt: skip
        out.append(grads(enc, det))
    assert_same_grads(out[1], out[0], 1e-12)


def test_kept_graphs_with_dropout_equal_end_to_end_in_one_micro_batch():
    snippets = torch.randn(1, 4, 2, 6, 6, dtype=torch.float64)
    enc, det = models(dropout=0.5)
    torch.manual_seed(7)
    end_to_end(enc, det, snippets)
    reference = grads(enc, det)
    enc, det = models(dropout=0.5)
    torch.manual_seed(7)
    run(enc, det, snippets, micro_batch_size=4, ratio=1.0, keep_graphs="all")
    assert_same_grads(grads(enc, det), reference, 1e-10)


@pytest.mark.parametrize("keep", [0, 4, "all"])
def test_kept_graphs_under_bfloat16_autocast(keep):
    torch.manual_seed(0)
    snippets = torch.randn(2, 6, 2, 6, 6)
    enc, det = models(torch.float32)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=4, ratio=1.0, keep_graphs=keep)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = sgs.encode(snippets)
        loss = loss_of(det, feats)
    loss.backward()
    sgs.backward(snippets, feats)  # outside autocast, as the trainer's phase 3 may be
    got = grads(enc)
    enc2, det2 = models(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        end_to_end(enc2, det2, snippets)
    assert_same_grads(got, grads(enc2), 2e-2)


def test_feature_guided_sampler_keeps_nothing():
    snippets = torch.randn(1, 10, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = run(enc, det, snippets, micro_batch_size=3, ratio=0.3, sampler="fps",
              keep_graphs="all")  # fmt: skip
    assert sgs.stats.snippets_kept == 0 and sgs.stats.snippets_recomputed == 3


def test_kept_graphs_are_freed_by_backward():
    snippets = torch.randn(1, 6, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=3, ratio=1.0, keep_graphs="all")
    feats = sgs.encode(snippets)
    record = sgs._records[feats]
    refs = [weakref.ref(t) for t in record.kept]
    assert len(refs) == 2
    del record
    loss_of(det, feats).backward()
    sgs.backward(snippets, feats)
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("bad", [-1, "lots", 1.5, True])
def test_bad_keep_budget_is_refused(bad):
    enc, _ = models()
    with pytest.raises(ValueError, match="keep_graphs"):
        SequentializedGradientSampler(enc, keep_graphs=bad)


def test_keep_budget_size_errors_name_the_option():
    enc, _ = models()
    with pytest.raises(ValueError, match="keep_graphs.*'12 parsecs'"):
        SequentializedGradientSampler(enc, keep_graphs="12 parsecs")


def test_auto_micro_batch_size_from_a_memory_budget():
    snippets = torch.randn(2, 12, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    end_to_end(enc, det, snippets)
    reference = grads(enc, det)
    enc, det = models()
    sgs = run(enc, det, snippets, micro_batch_size="auto", memory_budget="20KB", ratio=1.0)
    choice = sgs.auto_choice
    assert choice is not None and choice["micro_batch_size"] == sgs.micro_batch_size
    per_snippet = choice["saved_bytes_per_snippet"] + choice["workspace_bytes_per_snippet"]
    assert sgs.micro_batch_size == int(20_000 // per_snippet) >= 1
    assert sgs.encode_batch_size >= sgs.micro_batch_size
    # Phase 3 ran in micro-batches of the chosen K, and the gradient is still exact.
    assert max(enc.calls[-sgs.stats.recompute_calls :]) == sgs.micro_batch_size
    assert_same_grads(grads(enc, det), reference, 1e-10)
    assert all(p.grad is not None for p in enc.parameters())


def test_auto_micro_batch_size_errors():
    enc, _ = models()
    with pytest.raises(ValueError, match="memory_budget='2GB'"):
        SequentializedGradientSampler(enc, micro_batch_size="auto")
    sgs = SequentializedGradientSampler(enc, micro_batch_size="auto", memory_budget=16)
    with pytest.raises(ValueError, match=r"cannot hold one snippet: the probe measured .* per"):
        sgs.encode(torch.randn(1, 4, 2, 6, 6, dtype=torch.float64))


def test_phase_one_size_runs_unsampled_snippets_in_large_calls():
    snippets = torch.randn(1, 40, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    run(enc, det, snippets, micro_batch_size=2, encode_batch_size=16, ratio=0.1,
        independence_check=False)  # fmt: skip
    # Phase 1: 4 sampled snippets in calls of 2, then 36 others in calls of 16; phase 3: 2 x 2.
    assert enc.calls == [2, 2, 16, 16, 4, 2, 2]


def test_auto_phase_one_size_is_measured_on_the_first_batch():
    """'auto' runs the first batch at K, measuring s (phase 3) and w (phase 1) on the way, then
    sizes the no-grad calls to stay within one phase-3 micro-batch's memory."""
    snippets = torch.randn(1, 40, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = run(enc, det, snippets, micro_batch_size=2, ratio=0.1, independence_check=False,
              encode_batch_size="auto")  # fmt: skip
    assert set(enc.calls) == {2}  # the first batch: every call at K, no extra forward
    choice = sgs.phase1_choice
    assert choice is not None
    s, w = choice["saved_bytes_per_snippet"], choice["workspace_bytes_per_snippet"]
    assert s > 0 and w > 0
    assert sgs.encode_batch_size == max(2, min(16, int(2 * (s + w) // w)))
    assert sgs.encode_batch_size > 2  # this encoder saves far more than it needs transiently
    enc.calls.clear()
    sgs.encode(snippets)
    assert max(enc.calls) == sgs.encode_batch_size


class SlowSource:
    """A lazy source (not a TensorSource): prefetching applies under prefetch='auto'."""

    def __init__(self, snippets: torch.Tensor, fail_at: int | None = None) -> None:
        self.snippets, self.fail_at = snippets, fail_at

    def __len__(self) -> int:
        return int(self.snippets.shape[0])

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        if self.fail_at is not None and self.fail_at in indices.tolist():
            raise SnippetReadError(f"corrupt snippet {self.fail_at}", video_id="v0")
        return self.snippets[indices]


@pytest.mark.parametrize("prefetch", [True, False, "auto"])
def test_prefetch_gives_the_same_gradient(prefetch):
    snippets = torch.randn(2, 9, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    end_to_end(enc, det, snippets)
    reference = grads(enc, det)
    enc, det = models()
    sources = [SlowSource(snippets[0]), SlowSource(snippets[1])]
    run(enc, det, sources, micro_batch_size=2, ratio=1.0, prefetch=prefetch)
    assert_same_grads(grads(enc, det), reference, 1e-10)


def test_prefetch_reraises_a_decoding_error_in_order():
    snippets = torch.randn(1, 9, 2, 6, 6, dtype=torch.float64)
    enc, _ = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, ratio=0.0, prefetch=True)
    with pytest.raises(SnippetReadError, match="corrupt snippet 7"):
        sgs.encode([SlowSource(snippets[0], fail_at=7)])


class BatchConv(torch.nn.Module):
    """Mixes the snippets of a micro-batch: a temporal conv over the batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(72, 5)
        self.temporal = torch.nn.Conv1d(5, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x.flatten(1))  # [M, 5]
        return self.temporal(h.t().unsqueeze(0)).squeeze(0).t()


def test_engine_refuses_an_encoder_that_mixes_snippets_on_the_first_batch():
    sgs = SequentializedGradientSampler(BatchConv(), micro_batch_size=4, ratio=0.3)
    with pytest.raises(SnippetMixingError, match="temporal"):
        sgs.encode(torch.randn(1, 8, 2, 6, 6))
    with pytest.raises(SnippetMixingError):
        SequentializedGradientSampler(BatchConv()).encode_features(torch.randn(1, 8, 2, 6, 6))
    # Turned off, the engine runs (and its gradients would be wrong: eq. 4 does not hold).
    feats = SequentializedGradientSampler(BatchConv(), independence_check=False).encode(
        torch.randn(1, 8, 2, 6, 6)
    )
    assert feats.shape == (1, 8, 5)


def test_independence_check_runs_once_and_passes_a_clean_encoder():
    enc, _ = models(dropout=0.5)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, ratio=0.5)
    sgs.encode(torch.randn(1, 6, 2, 6, 6, dtype=torch.float64))
    first = len(enc.calls)
    sgs.encode(torch.randn(1, 6, 2, 6, 6, dtype=torch.float64))
    assert len(enc.calls) - first < first  # the second batch runs no check


def _mask_from(state: torch.Tensor, lengths: list[int], ratio: float) -> torch.Tensor:
    replay = torch.Generator()
    replay.set_state(state)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for v, n in enumerate(lengths):
        k = num_sampled(n, ratio)
        idx = make_sampler("random")(n, k, generator=replay) if k < n else torch.arange(n)
        mask[v, idx] = True
    return mask


def _warm_up(sgs, det, dtype=torch.float64):
    warm = torch.randn(1, 4, 2, 6, 6, dtype=dtype)
    feats = sgs.encode(warm)
    loss_of(det, feats).backward()
    sgs.backward(warm, feats)
    for p in [*sgs.encoder.parameters(), *det.parameters()]:
        p.grad = None


@pytest.mark.parametrize("ratio", [0.3, 1.0])
def test_an_encoder_without_randomness_shares_the_large_phase_one_calls(ratio):
    snippets = torch.randn(2, 10, 2, 6, 6, dtype=torch.float64)
    enc, det = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, encode_batch_size=8, ratio=ratio,
                                        independence_check=False,
                                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    _warm_up(sgs, det)  # the first batch finds out that phase 1 draws no random numbers
    state = sgs.generator.get_state()
    enc.calls.clear()
    feats = sgs.encode(snippets)
    assert enc.calls == [8, 8, 4]  # every snippet at the phase-1 size, sampled ones included
    loss_of(det, feats).backward()
    sgs.backward(snippets, feats)
    n = num_sampled(10, ratio)
    assert enc.calls[3:] == [2] * n  # phase 3 in fresh calls of K
    got = grads(enc, det)
    enc, det = models()
    end_to_end(enc, det, snippets, feature_mask=_mask_from(state, [10, 10], ratio))
    assert_same_grads(got, grads(enc, det), 1e-10)


def test_an_encoder_with_dropout_keeps_replayable_calls():
    enc, det = models(dropout=0.5)
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, encode_batch_size=8, ratio=0.3,
                                        independence_check=False)  # fmt: skip
    _warm_up(sgs, det)
    enc.calls.clear()
    sgs.encode(torch.randn(1, 10, 2, 6, 6, dtype=torch.float64))
    assert enc.calls == [2, 1, 7]  # 3 sampled in calls of K first (replayed), then the rest


def test_dropout_switched_on_later_falls_back_to_replayable_calls(caplog):
    enc, det = models(dropout=0.5)
    enc.drop.eval()  # no randomness at first
    sgs = SequentializedGradientSampler(enc, micro_batch_size=2, encode_batch_size=8, ratio=0.5,
                                        independence_check=False)  # fmt: skip
    _warm_up(sgs, det)
    enc.drop.train()
    snippets = torch.randn(1, 10, 2, 6, 6, dtype=torch.float64)
    with caplog.at_level("WARNING"):
        feats = sgs.encode(snippets)
    assert "phase 1 is rerun" in caplog.text
    loss_of(det, feats).backward()
    sgs.backward(snippets, feats)  # the determinism check would fail without the rerun
    assert all(p.grad is not None for p in enc.parameters())


def test_no_prefetch_over_snippets_already_on_a_device():
    """F18: snippets held on a device (a CUDA TensorSource; "meta" stands for it here) are
    never gathered in the prefetch thread, even with prefetch=True: nothing is decoded, and
    the gather would run on that thread's stream with no event ordering it."""
    from sgs_tad.engine.microbatch import prefetches
    from sgs_tad.engine.sources import TensorSource

    cpu = TensorSource(torch.zeros(4, 3))
    device = TensorSource(torch.zeros(4, 3, device="meta"))
    lazy = SlowSource(torch.zeros(4, 3))
    assert prefetches(True, [cpu]) and not prefetches("auto", [cpu])
    assert prefetches("auto", [lazy, cpu]) and not prefetches(False, [lazy])
    for option in (True, "auto", False):
        assert not prefetches(option, [device])
        assert not prefetches(option, [lazy, device])


class WideConv(torch.nn.Module):
    """Its weights (38 KB in bf16) outweigh what one snippet saves for backward (~2 KB)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 256, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, 3, 6, 6] -> [M, 256]
        return torch.relu(self.conv(x)).mean((2, 3))


def test_kept_bytes_under_autocast_leave_out_the_cached_weight_copies():
    """F15: under autocast every conv saves the cached bf16 copy of its weight; a meter per
    kept micro-batch counted it again each time (and in the per-snippet cost), so a
    "20KB" keep budget kept nothing. The copies are a fixed cost, like the parameters."""
    from sgs_tad.engine.memory import SavedBytesMeter

    enc, x = WideConv(), torch.randn(2, 3, 6, 6)
    meter = SavedBytesMeter(exclude=list(enc.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16), meter:
        out = enc(x)
    assert 0 < meter.peak < 10_000  # activations only (the weight copy alone is 38,400 B)
    del out
    sgs = SequentializedGradientSampler(WideConv(), micro_batch_size=2, ratio=1.0,
                                        keep_graphs="20KB", determinism_check=False)  # fmt: skip
    snippets = torch.randn(1, 8, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = sgs.encode(snippets)
    assert sgs.stats.snippets_kept >= 4, sgs.stats
    assert sgs.stats.kept_bytes <= 20_000
    feats.float().sum().backward()
    sgs.backward(snippets, feats)


def test_auto_k_on_cuda_fits_a_fixed_and_a_per_snippet_cost(monkeypatch):
    """F9: on CUDA a micro-batch's training peak holds a fixed part (cuDNN workspace,
    allocator rounding). Probed at M = 2 alone, it was divided by 2 and multiplied by K, and K
    came out too small; two probes (M = 2 and 4) now fit fixed + slope · M. Fabricated
    measurements: 400 MB fixed, 100 MB per snippet (60 saved), no-grad 200 MB + 20 MB each."""
    import sgs_tad.engine.sizing as sizing
    from sgs_tad.engine.memory import SnippetCost
    from sgs_tad.engine.microbatch import as_sources

    mb = 2**20
    probed = []

    def fake_cost(encoder, shape, *, micro_batch_size, **kwargs):
        m = micro_batch_size
        probed.append(m)
        return SnippetCost(snippet_shape=tuple(shape), micro_batch_size=m, device="cuda:0",
                           input_bytes=4, feature_bytes=4, saved_bytes=60.0 * mb,
                           nograd_peak_bytes=(200 + 20 * m) * mb / m,
                           train_peak_bytes=(400 + 100 * m) * mb / m, fwd_nograd_s=0.0,
                           fwd_grad_s=0.0, bwd_s=0.0, param_bytes=0, grad_bytes=0,
                           optimizer_bytes=0)  # fmt: skip

    monkeypatch.setattr(sizing, "measure_snippet_cost", fake_cost)
    monkeypatch.setattr(SequentializedGradientSampler, "device",
                        property(lambda self: torch.device("cuda", 0)))  # fmt: skip
    enc, _ = models()
    sgs = SequentializedGradientSampler(enc, micro_batch_size="auto", memory_budget=2000 * mb,
                                        encode_batch_size="auto")  # fmt: skip
    sgs._resolve_auto(as_sources(torch.randn(1, 4, 2, 6, 6)))
    assert probed == [2, 4]
    assert sgs.micro_batch_size == (2000 - 400) // 100 == 16  # one probe said 2000 // 300 = 6
    assert sgs.encode_batch_size == (2000 - 200) // 20
    assert sgs.auto_choice["fixed_bytes"] == pytest.approx(400 * mb)


def test_fit_fixed_and_per_snippet_falls_back_to_the_worst_per_snippet_cost():
    from sgs_tad.engine.sizing import fit_fixed_and_per_snippet

    assert fit_fixed_and_per_snippet([(2, 600.0), (4, 1000.0)]) == (200.0, 200.0)
    # Noise: a negative intercept or slope is not physical; no fixed part, the larger per M.
    assert fit_fixed_and_per_snippet([(2, 600.0), (4, 1400.0)]) == (0.0, 350.0)
    assert fit_fixed_and_per_snippet([(2, 600.0), (4, 500.0)]) == (0.0, 300.0)
    with pytest.raises(ValueError, match="at least one"):
        fit_fixed_and_per_snippet([])


def test_phase1_meter_on_cuda_counts_what_the_allocator_saw(monkeypatch):
    """F9: the phase-1 size's workspace counts op outputs only (no cuDNN workspace); on CUDA
    the meter also takes the allocator's peak growth and the reserve it added. Fabricated
    allocator counters: entry 1000 allocated, peak 1500, reserved 2000; exit peak 1800 and
    reserved 2600 -> at least 800 (peak growth) and 600 (reserve growth)."""
    from sgs_tad.engine.memory import DeviceBytesMeter

    counters = {"allocated": 1000, "peak": 1500, "reserved": 2000}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: counters["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: counters["peak"])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: counters["reserved"])
    with DeviceBytesMeter(device="cuda:0") as meter:
        torch.ones(4) + 1  # 32 bytes of op outputs (ones, then the sum)
        counters.update(peak=1800, reserved=2600)
    assert meter.peak == 800
    with DeviceBytesMeter(device="cuda:0") as hidden:  # an older, higher peak hides the call's
        torch.ones(4) + 1
    assert hidden.peak == 32
    with DeviceBytesMeter(device="cpu") as cpu:
        torch.ones(4) + 1
    assert cpu.peak == 32
