"""Contract of every snippet sampler: counts, ranges, order, reproducibility, errors."""

from __future__ import annotations

import pytest
import torch

from sgs_tad.samplers import (
    BlockSampler,
    FPSSampler,
    GridSampler,
    KDPPSampler,
    RandomSampler,
    Sampler,
    available_samplers,
    make_sampler,
)
from sgs_tad.samplers.balanced import balanced_counts, balanced_sample

SIZES = [(1, 1), (10, 0), (10, 3), (37, 37), (128, 38), (200, 12)]
STRATEGIES = ["random", "grid", "block", "fps", "kdpp"]


def _features(num_items: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_items, 8, generator=torch.Generator().manual_seed(100 + seed))


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("num_items,num_samples", SIZES)
@pytest.mark.parametrize("seed", [0, 1])
def test_contract(name: str, num_items: int, num_samples: int, seed: int) -> None:
    sampler = make_sampler(name)
    assert isinstance(sampler, Sampler)
    feats = _features(num_items, seed)
    rng_before = torch.get_rng_state()
    g = torch.Generator().manual_seed(seed)
    state = g.get_state()
    idx = sampler(num_items, num_samples, features=feats, generator=g)
    assert torch.equal(torch.get_rng_state(), rng_before), "global RNG was touched"
    assert idx.dtype == torch.long and idx.dim() == 1
    assert idx.numel() == num_samples
    assert idx.unique().numel() == num_samples
    if num_samples:
        assert int(idx.min()) >= 0 and int(idx.max()) < num_items
    assert torch.equal(idx, idx.sort().values)
    g.set_state(state)
    again = sampler(num_items, num_samples, features=feats, generator=g)
    assert torch.equal(idx, again), "same generator state must give the same indices"


def test_requires_features_flags() -> None:
    flags = {name: make_sampler(name).requires_features for name in STRATEGIES}
    assert flags == {
        "random": False,
        "grid": False,
        "block": False,
        "fps": True,
        "kdpp": True,
    }


def test_different_seeds_differ() -> None:
    for name in ("random", "grid", "block", "fps", "kdpp"):
        sampler = make_sampler(name)
        feats = _features(200)
        draws = {
            tuple(
                sampler(
                    200, 20, features=feats, generator=torch.Generator().manual_seed(s)
                ).tolist()
            )
            for s in range(6)
        }
        assert len(draws) > 1, name


def test_make_sampler_registry_and_passthrough() -> None:
    assert available_samplers() == STRATEGIES
    assert isinstance(make_sampler("random"), RandomSampler)
    assert isinstance(make_sampler("grid"), GridSampler)
    assert isinstance(make_sampler("block"), BlockSampler)
    assert isinstance(make_sampler("fps"), FPSSampler)
    assert isinstance(make_sampler("kdpp", eps=0.1), KDPPSampler)
    obj = GridSampler(offset="center")
    assert make_sampler(obj) is obj

    def plain(num_items, num_samples, *, features=None, generator=None):  # type: ignore[no-untyped-def]
        return torch.arange(num_samples)

    assert make_sampler(plain) is plain


def test_make_sampler_errors() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'dpp'.*random, grid, block, fps, kdpp"):
        make_sampler("dpp")
    with pytest.raises(TypeError, match="options"):
        make_sampler(RandomSampler(), offset="center")
    with pytest.raises(TypeError, match="callable"):
        make_sampler(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        make_sampler("random", offset="center")  # RandomSampler takes no options
    with pytest.raises(ValueError, match="offset"):
        make_sampler("grid", offset="left")


@pytest.mark.parametrize("name", STRATEGIES)
def test_bad_counts(name: str) -> None:
    sampler = make_sampler(name)
    feats = _features(10)
    with pytest.raises(ValueError, match="num_samples=11.*num_items=10"):
        sampler(10, 11, features=feats)
    with pytest.raises(ValueError, match="num_samples=-1"):
        sampler(10, -1, features=feats)
    with pytest.raises(TypeError, match="num_samples must be an int"):
        sampler(10, 2.5, features=feats)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["fps", "kdpp"])
def test_bad_features(name: str) -> None:
    sampler = make_sampler(name)
    with pytest.raises(ValueError, match="feature-guided"):
        sampler(10, 3)
    with pytest.raises(ValueError, match=r"shape \[num_items=10, C\].*\(9, 4\)"):
        sampler(10, 3, features=torch.randn(9, 4))
    with pytest.raises(ValueError, match=r"\(10,\)"):
        sampler(10, 3, features=torch.randn(10))
    bad = torch.randn(10, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sampler(10, 3, features=bad)
    with pytest.raises(TypeError, match="floating-point"):
        sampler(10, 3, features=torch.ones(10, 4, dtype=torch.long))


def test_grid_is_evenly_strided() -> None:
    idx = GridSampler(offset="center")(100, 10)
    assert idx.tolist() == list(range(5, 100, 10))
    # random phase: still stride 10, phase within one stride, all phases reachable
    phases = set()
    for s in range(40):
        idx = GridSampler()(100, 10, generator=torch.Generator().manual_seed(s))
        assert torch.all(idx.diff() == 10)
        phases.add(int(idx[0]))
    assert phases <= set(range(10)) and len(phases) >= 5
    # uneven stride: gaps differ by at most one
    gaps = GridSampler()(103, 10, generator=torch.Generator().manual_seed(0)).diff()
    assert set(gaps.tolist()) <= {10, 11}


def test_block_is_contiguous_and_covers_all_starts() -> None:
    starts = set()
    for s in range(200):
        idx = BlockSampler()(12, 5, generator=torch.Generator().manual_seed(s))
        assert torch.all(idx.diff() == 1)
        starts.add(int(idx[0]))
    assert starts == set(range(8))


def test_random_is_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    for _ in range(2000):
        counts[RandomSampler()(10, 3, generator=g)] += 1
    # expected 600 each; 5 sigma of a binomial(2000, .3) is ~100
    assert torch.all((counts - 600).abs() < 100), counts


def test_default_generator_follows_manual_seed() -> None:
    torch.manual_seed(123)
    a = RandomSampler()(50, 5)
    torch.manual_seed(123)
    b = RandomSampler()(50, 5)
    assert torch.equal(a, b)


def test_balanced_counts_fill_from_other_bins() -> None:
    g = torch.Generator().manual_seed(0)
    assert balanced_counts([100, 100, 100], 30, generator=g) == [10, 10, 10]
    counts = balanced_counts([100, 100, 100], 31, generator=g)
    assert sorted(counts) == [10, 10, 11]
    # a short bin gives all it has; the others share its shortfall equally
    assert balanced_counts([2, 100, 100], 30, generator=g) == [2, 14, 14]
    assert balanced_counts([0, 5, 100], 30, generator=g) == [0, 5, 25]
    assert balanced_counts([3, 3, 3], 9, generator=g) == [3, 3, 3]
    with pytest.raises(ValueError, match="num_samples=10"):
        balanced_counts([3, 3, 3], 10)


def test_balanced_sample_bins() -> None:
    bins = torch.tensor([0] * 50 + [1] * 4 + [2] * 30)
    idx = balanced_sample(bins, 3, 30, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(bins[idx], minlength=3).tolist() == [13, 4, 13]
    assert idx.unique().numel() == 30 and torch.equal(idx, idx.sort().values)
    with pytest.raises(ValueError, match="bins must lie"):
        balanced_sample(torch.tensor([0, 3]), 3, 1)
