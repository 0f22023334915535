"""Phase 3 re-runs only the trainable stages: the frozen prefix kept from phase 1.

Every test compares against a reference that does not use the prefix (plain end-to-end
backprop, or SGS with ``reuse_frozen_prefix=False``), so a wrong split, a stale kept tensor or
a dropout mask drawn from the wrong RNG state fails it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import sgs_tad
from sgs_tad.encoders import VideoEncoder, build_encoder, freeze_encoder
from sgs_tad.engine.prefix import frozen_prefix_stages, parse_prefix_budget
from sgs_tad.engine.sources import TensorSource
from test_sgs import assert_same_grads


def _randomise(enc: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    return enc


def _x(m: int, shape: tuple[int, ...], seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn((m, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


CASES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "small3d": ({"widths": (8, 16, 16)}, (3, 4, 16, 16)),
    "tsm_r50": ({}, (3, 2, 16, 16)),
    "r2plus1d_34": ({}, (3, 2, 16, 16)),
    "videomae_tiny": ({}, (3, 4, 32, 32)),
}


def _encoder(name: str, frozen: int, **opts: Any) -> VideoEncoder:
    enc = build_encoder(name, **{**CASES[name][0], **opts})  # type: ignore[arg-type]
    _randomise(enc, 5)
    return freeze_encoder(enc, frozen_stages=frozen).double().train()


@pytest.mark.parametrize("name", sorted(CASES))
def test_prefix_then_suffix_is_the_forward_at_every_split(name: str) -> None:
    enc = _encoder(name, -1).eval()
    x = _x(3, CASES[name][1], seed=1)
    with torch.no_grad():
        whole = enc(x)
        for s in range(enc.num_stages):
            h = enc.forward_prefix(x, s)
            assert h.shape[0] == 3  # one row per snippet, whatever the encoder's layout
            assert torch.equal(enc.forward_suffix(h, s), whole), s


def test_frozen_prefix_stages_counts_the_leading_stages_without_a_trainable_parameter() -> None:
    assert _encoder("tsm_r50", -1).frozen_prefix_stages() == 0
    assert _encoder("tsm_r50", 0).frozen_prefix_stages() == 1  # the stem
    assert _encoder("tsm_r50", 2).frozen_prefix_stages() == 3  # the paper's setting
    assert _encoder("tsm_r50", 4).frozen_prefix_stages() == 4  # (the head keeps one stage)
    enc = _encoder("small3d", 1)
    assert enc.num_stages == 3 and enc.frozen_prefix_stages() == 2
    enc.stem[0].weight.requires_grad_(True)  # an adapter in the stem: nothing to skip
    assert enc.frozen_prefix_stages() == 0
    # what the engine runs in parts: not a wrapper, not a compiled module, not a plain module
    assert frozen_prefix_stages(_encoder("small3d", 1)) == 2
    assert frozen_prefix_stages(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) == 0
    assert frozen_prefix_stages(torch.compile(_encoder("small3d", 1))) == 0


Grads = dict[str, torch.Tensor]


def _step(
    enc: nn.Module, snippets: Any, *, k: int, ratio: float, seed: int = 3, **options: Any
) -> tuple[Grads, sgs_tad.SequentializedGradientSampler]:
    n = snippets.shape[1] if isinstance(snippets, torch.Tensor) else len(snippets[0])
    weights = torch.randn(n, enc.out_channels, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)  # fmt: skip
    sgs = sgs_tad.SequentializedGradientSampler(
        enc, micro_batch_size=k, ratio=ratio, generator=torch.Generator().manual_seed(seed),
        **options,
    )  # fmt: skip
    torch.manual_seed(11)
    feats = sgs.encode(snippets)
    (feats[0] * weights).sum().backward()
    sgs.backward(snippets, feats)
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    return grads, sgs


def _calls(module: nn.Module) -> list[int]:
    seen: list[int] = []
    module.register_forward_hook(lambda m, i, o: seen.append(int(i[0].shape[0])))
    return seen


@pytest.mark.parametrize(("name", "frozen"), [("small3d", 1), ("tsm_r50", 2), ("r2plus1d_34", 2)])
def test_ratio_one_with_the_prefix_kept_equals_end_to_end(name: str, frozen: int) -> None:
    snippets = _x(6, CASES[name][1], seed=4).unsqueeze(0)
    enc = _encoder(name, frozen)
    weights = torch.randn(6, enc.out_channels, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)  # fmt: skip
    (enc(snippets[0]) * weights).sum().backward()
    reference = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    enc = _encoder(name, frozen)
    stem = _calls(enc.get_submodule(enc.stem_names[0]))
    got, sgs = _step(enc, snippets, k=4, ratio=1.0, independence_check=False)
    assert sgs.stats.snippets_prefix_kept == 6 and sgs.stats.prefix_bytes > 0
    assert len(stem) == 2  # the two phase-1 calls: phase 3 started after the frozen stages
    assert sorted(got) == sorted(reference)
    assert_same_grads(got, reference, 1e-10)


def test_partial_ratio_gives_the_same_gradient_with_and_without_the_prefix() -> None:
    snippets = _x(10, CASES["small3d"][1], seed=6).unsqueeze(0)
    off, sgs_off = _step(_encoder("small3d", 1), snippets, k=3, ratio=0.5,
                         reuse_frozen_prefix=False)  # fmt: skip
    on, sgs_on = _step(_encoder("small3d", 1), snippets, k=3, ratio=0.5)
    assert sgs_off.stats.snippets_prefix_kept == 0 and sgs_on.stats.snippets_prefix_kept == 5
    assert sgs_on.stats.snippets_sampled == sgs_off.stats.snippets_sampled == 5
    assert_same_grads(on, off, 1e-10)


def test_dropout_before_and_after_the_split_replays_exactly() -> None:
    """ViT: the patch embedding and two blocks frozen; dropout after the positions (in the
    prefix) and drop-path and dropout in the trained blocks. Phase 3 must draw the trained
    blocks' masks as phase 1 did, although it skips the prefix's draws: the determinism
    check inside backward compares the features; with K = N the gradient is end to end's."""
    opts = {"drop_rate": 0.2, "drop_path_rate": 0.3}
    snippets = _x(6, CASES["videomae_tiny"][1], seed=7).unsqueeze(0)
    enc = _encoder("videomae_tiny", 2, **opts)
    weights = torch.randn(6, enc.out_channels, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)  # fmt: skip
    torch.manual_seed(11)
    (enc(snippets[0]) * weights).sum().backward()
    reference = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    got, sgs = _step(_encoder("videomae_tiny", 2, **opts), snippets, k=6, ratio=1.0)
    assert sgs.stats.snippets_prefix_kept == 6
    assert_same_grads(got, reference, 1e-10)
    # K < N: masks differ from a plain forward's, but phase 3 must still replay phase 1's
    _, sgs = _step(_encoder("videomae_tiny", 2, **opts), snippets, k=2, ratio=1.0)
    assert sgs.stats.snippets_prefix_kept == 6 and sgs.stats.recompute_calls == 3


class CountingSource(TensorSource):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__(x)
        self.asked: list[int] = []

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        self.asked.append(int(indices.numel()))
        return super().get_snippets(indices)


@pytest.mark.parametrize(("budget", "kept"), [(2, 2), ("1KB", 0), (True, 6), (False, 0)])
def test_the_budget_bounds_what_is_kept_and_the_rest_is_recomputed(budget, kept) -> None:
    x = _x(6, CASES["small3d"][1], seed=8)
    reference, _ = _step(_encoder("small3d", 1), x.unsqueeze(0), k=2, ratio=1.0,
                         reuse_frozen_prefix=False)  # fmt: skip
    source = CountingSource(x)
    got, sgs = _step(_encoder("small3d", 1), [source], k=2, ratio=1.0,
                     reuse_frozen_prefix=budget, independence_check=False)  # fmt: skip
    assert sgs.stats.snippets_prefix_kept == kept
    # phase 1 gathered all 6; phase 3 gathered only what it re-ran whole
    assert sum(source.asked) == 6 + (6 - kept)
    assert_same_grads(got, reference, 1e-10)


def test_bad_budgets_are_refused_with_the_accepted_values() -> None:
    with pytest.raises(ValueError, match="reuse_frozen_prefix must be >= 0"):
        parse_prefix_budget(-1)
    with pytest.raises(ValueError, match="reuse_frozen_prefix: "):
        parse_prefix_budget("lots")
    with pytest.raises(ValueError, match=r"True/'all'.*False/0.*'256MB'; got 1.5"):
        parse_prefix_budget(1.5)  # type: ignore[arg-type]


def test_kept_graphs_and_kept_prefixes_together() -> None:
    """The first sampled micro-batch keeps its graph, the others their prefix output."""
    x = _x(6, CASES["small3d"][1], seed=9).unsqueeze(0)
    reference, _ = _step(_encoder("small3d", 1), x, k=2, ratio=1.0, reuse_frozen_prefix=False)
    got, sgs = _step(_encoder("small3d", 1), x, k=2, ratio=1.0, keep_graphs=2)
    assert sgs.stats.snippets_kept == 2 and sgs.stats.snippets_prefix_kept == 4
    assert sgs.stats.recompute_calls == 2
    assert_same_grads(got, reference, 1e-10)


def test_bf16_autocast_replays_the_suffix_in_phase_ones_precision() -> None:
    x = _x(6, CASES["small3d"][1], seed=10, dtype=torch.float32).unsqueeze(0)
    out = []
    for budget in (False, True):
        enc = _encoder("small3d", 1).float()
        sgs = sgs_tad.SequentializedGradientSampler(enc, micro_batch_size=2, ratio=1.0,
                                                    reuse_frozen_prefix=budget)  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = sgs.encode(x)
            loss = feats.float().square().mean()
        loss.backward()
        sgs.backward(x, feats)  # the determinism check compares phase 3 with phase 1
        assert sgs.stats.snippets_prefix_kept == (6 if budget else 0)
        out.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    for name in out[0]:
        torch.testing.assert_close(out[1][name], out[0][name], rtol=0, atol=0, msg=name)


def test_the_main_jobs_option_takes_off_all_a_count_or_a_size_and_refuses_the_rest() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from etad.options import parse_args

    def value(text: str) -> Any:
        return parse_args(["--reuse-frozen-prefix", text]).reuse_frozen_prefix

    assert parse_args([]).reuse_frozen_prefix == "256MB"
    assert (value("off"), value("all"), value("64"), value("1GB")) == (False, "all", 64, "1GB")
    with pytest.raises(SystemExit):
        value("lots")


def test_the_planner_predicts_the_kept_prefix_and_its_saving() -> None:
    from sgs_tad.engine.memory import measure_snippet_cost
    from sgs_tad.engine.prefix import PrefixCost, kept_prefix_snippets, measure_prefix_cost
    from sgs_tad.plan import predict

    shape = CASES["small3d"][1]
    assert measure_prefix_cost(_encoder("small3d", -1).float(), shape) is None
    enc = _encoder("small3d", 1).float()
    prefix = measure_prefix_cost(enc, shape, micro_batch_size=3, repeats=1)
    assert prefix is not None and prefix.stages == 2
    with torch.no_grad():
        h = enc.forward_prefix(torch.zeros(1, *shape), 2)
    assert prefix.bytes_per_snippet == h.numel() * h.element_size()
    assert prefix.seconds_per_snippet > 0

    cost = measure_snippet_cost(enc, shape, micro_batch_size=2, repeats=1)
    fixed = PrefixCost(stages=2, bytes_per_snippet=1000.0, seconds_per_snippet=0.01)
    plain = predict(cost, n=20, k=4, ratio=0.5, method="sgs")
    kept = predict(cost, n=20, k=4, ratio=0.5, method="sgs", prefix=fixed)
    assert (plain.prefix_snippets, kept.prefix_snippets) == (0, 10)
    assert kept.peak_bytes == plain.peak_bytes + 10 * 1000.0
    assert kept.time_s == pytest.approx(plain.time_s - 10 * 0.01)
    # a budget of 9 snippets keeps two whole micro-batches of 4; 2.5 KB keeps two snippets' worth
    nine = predict(cost, n=20, k=4, ratio=0.5, method="sgs", prefix=fixed, prefix_budget=9)
    assert nine.prefix_snippets == 8
    # as the engine: a micro-batch that does not fit is skipped, a later smaller one may fit
    assert kept_prefix_snippets(10, 4, 1000.0, parse_prefix_budget("2.5KB")) == 2  # 4, 4, [2]
    assert kept_prefix_snippets(10, 2, 1000.0, parse_prefix_budget("2.5KB")) == 2
    assert kept_prefix_snippets(10, 4, 1000.0, parse_prefix_budget(6)) == 6
    assert predict(cost, n=20, k=4, method="naive", prefix=fixed).prefix_bytes == 0


@pytest.mark.parametrize("budget", [6, "300KB", "1MB"])
def test_the_planners_count_is_what_the_engine_keeps(budget) -> None:
    from sgs_tad.engine.prefix import kept_prefix_snippets

    x = _x(10, CASES["small3d"][1], seed=12).unsqueeze(0)
    enc = _encoder("small3d", 1)
    with torch.no_grad():
        h = enc.forward_prefix(x[0, :1], 2)
    _, sgs = _step(enc, x, k=4, ratio=1.0, reuse_frozen_prefix=budget)
    per = h.numel() * h.element_size()
    assert sgs.stats.snippets_prefix_kept == kept_prefix_snippets(
        10, 4, per, parse_prefix_budget(budget)
    )
    assert sgs.stats.prefix_bytes == sgs.stats.snippets_prefix_kept * per


def test_videos_of_different_lengths_packed_together_and_in_snippet_checkpointing() -> None:
    """Phase 3's micro-batches pack sampled snippets of several videos; the kept rows must
    follow them. And a ViT whose trained blocks checkpoint inside the snippet."""
    shape = CASES["small3d"][1]
    videos = [_x(7, shape, seed=13), _x(4, shape, seed=14)]
    out = []
    for budget in (False, True):
        enc = _encoder("small3d", 1)
        sgs = sgs_tad.SequentializedGradientSampler(
            enc, micro_batch_size=3, ratio=0.6, reuse_frozen_prefix=budget,
            generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        feats = sgs.encode(videos)
        (
            feats * torch.linspace(-1, 1, feats.shape[1], dtype=feats.dtype)[None, :, None]
        ).sum().backward()
        sgs.backward(videos, feats)
        out.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert sgs.stats.snippets_prefix_kept == sgs.stats.snippets_sampled == 5 + 3
    assert_same_grads(out[1], out[0], 1e-10)

    opts = {"checkpoint_blocks": True, "drop_path_rate": 0.2}
    snippets = _x(4, CASES["videomae_tiny"][1], seed=15).unsqueeze(0)
    ref, _ = _step(_encoder("videomae_tiny", 1, **opts), snippets, k=2, ratio=1.0,
                   reuse_frozen_prefix=False)  # fmt: skip
    got, sgs = _step(_encoder("videomae_tiny", 1, **opts), snippets, k=2, ratio=1.0)
    assert sgs.stats.snippets_prefix_kept == 4
    assert_same_grads(got, ref, 1e-10)


def test_an_encoder_with_hooks_on_itself_runs_whole() -> None:
    """A hook on the encoder module runs in encoder(x) only, not in its parts: the engine must
    not skip it for the sampled snippets. Hooks on submodules still run, so they are fine."""
    x = _x(6, CASES["small3d"][1], seed=16).unsqueeze(0)
    reference, _ = _step(_encoder("small3d", 1), x, k=2, ratio=1.0, reuse_frozen_prefix=False)

    def double(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return 2 * out

    enc = _encoder("small3d", 1)
    enc.register_forward_hook(double)
    got, sgs = _step(enc, x, k=2, ratio=1.0)
    assert sgs.stats.snippets_prefix_kept == 0  # run whole, so the hook doubles every feature
    for name, g in reference.items():
        torch.testing.assert_close(got[name], 2 * g, rtol=1e-10, atol=1e-12, msg=name)

    enc = _encoder("small3d", 1)
    calls: list[int] = []
    enc.layer2.register_forward_hook(lambda m, a, o: calls.append(len(o)))
    got, sgs = _step(enc, x, k=2, ratio=1.0, independence_check=False)
    assert sgs.stats.snippets_prefix_kept == 6 and sum(calls) == 12  # phases 1 and 3
    assert_same_grads(got, reference, 1e-10)
    with torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: None):
        assert frozen_prefix_stages(_encoder("small3d", 1)) == 0


def test_bad_splits_and_probe_arguments_are_refused_naming_the_value() -> None:
    from sgs_tad.engine.prefix import measure_prefix_cost

    enc = _encoder("small3d", 1)
    x = _x(1, CASES["small3d"][1])
    with pytest.raises(ValueError, match=r"stages=3 is out of range for Small3DCNN.*<= 2"):
        enc.forward_prefix(x, 3)
    with pytest.raises(ValueError, match="stages=-1 is out of range"):
        enc.forward_suffix(x, -1)
    with pytest.raises(TypeError, match="stages must be an int .* got True"):
        enc.forward_prefix(x, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="micro_batch_size must be an int >= 1, got 0"):
        measure_prefix_cost(enc, CASES["small3d"][1], micro_batch_size=0)
    with pytest.raises(ValueError, match=r"snippet_shape must be .* got \(3, 0\)"):
        measure_prefix_cost(enc, (3, 0))
