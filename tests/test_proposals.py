"""The dense proposal map, IoU, descriptors and Action Proposal Sampling."""

from __future__ import annotations

import pytest
import torch

from sgs_tad.detection.proposals import (
    PROPOSAL_STRATEGIES,
    ProposalMap,
    num_sampled_proposals,
    proposal_descriptors,
    proposal_iou,
    sample_proposals,
)
from sgs_tad.samplers import GridSampler


@pytest.mark.parametrize("T,D,P", [(128, 128, 8256), (128, 64, 6176), (5, 3, 12), (1, 1, 1)])
def test_map_geometry(T: int, D: int, P: int) -> None:
    pmap = ProposalMap(T, D)
    assert pmap.num_proposals == P
    assert pmap.valid_mask.shape == (D, T) and int(pmap.valid_mask.sum()) == P
    assert torch.all(pmap.starts <= pmap.ends) and torch.all(pmap.ends < T)
    assert torch.all(pmap.ends - pmap.starts < D)
    pairs = {(s, e) for s in range(T) for e in range(s, min(T, s + D))}
    assert set(zip(pmap.starts.tolist(), pmap.ends.tolist())) == pairs
    # BMN layout: row = duration index e - s, column = start
    rows, cols = pmap.valid_mask.nonzero(as_tuple=True)
    assert torch.equal(cols, pmap.starts) and torch.equal(rows, pmap.ends - pmap.starts)
    expected = torch.stack([pmap.starts / T, (pmap.ends + 1) / T], dim=1).float()
    assert torch.allclose(pmap.coords, expected)


def test_to_map_from_map_roundtrip() -> None:
    pmap = ProposalMap(16, 8)
    values = torch.randn(pmap.num_proposals, 3)
    dense = pmap.to_map(values, fill=-1.0)
    assert dense.shape == (8, 16, 3)
    assert torch.all(dense[~pmap.valid_mask] == -1.0)
    assert torch.equal(pmap.from_map(dense), values)
    d, s = 2, 5
    index = int(((pmap.starts == s) & (pmap.ends == s + d)).nonzero())
    assert torch.equal(dense[d, s], values[index])
    mask = pmap.mask_of(torch.tensor([0, index]))
    assert int(mask.sum()) == 2 and bool(mask[d, s]) and bool(mask[0, 0])
    with pytest.raises(ValueError, match=r"\[P=100"):
        pmap.to_map(torch.zeros(5))
    with pytest.raises(ValueError, match=r"\[D=8, T=16"):
        pmap.from_map(torch.zeros(16, 8))


def test_bad_map_sizes() -> None:
    with pytest.raises(ValueError, match="max_duration=9"):
        ProposalMap(8, 9)
    with pytest.raises(ValueError, match="num_snippets=0"):
        ProposalMap(0, 1)
    with pytest.raises(TypeError, match="num_snippets must be an int"):
        ProposalMap(8.0, 4)  # type: ignore[arg-type]


def test_proposal_iou_matches_brute_force() -> None:
    pmap = ProposalMap(10, 6)
    gt = torch.tensor([[0.1, 0.45], [0.5, 1.0], [0.3, 0.3]])
    iou = proposal_iou(pmap, gt)
    assert iou.shape == (pmap.num_proposals, 3)
    for p in range(pmap.num_proposals):
        a, b = pmap.coords[p].tolist()
        for g, (c, d) in enumerate(gt.tolist()):
            inter = max(0.0, min(b, d) - max(a, c))
            union = (b - a) + (d - c) - inter
            assert float(iou[p, g]) == pytest.approx(inter / union, abs=1e-6)
    exact = (pmap.starts == 5) & (pmap.ends == 9)
    assert float(iou[exact, 1]) == pytest.approx(1.0)
    assert proposal_iou(pmap, torch.zeros(0, 2)).shape == (pmap.num_proposals, 0)
    with pytest.raises(ValueError, match=r"\[G, 2\]"):
        proposal_iou(pmap, torch.zeros(3))
    with pytest.raises(ValueError, match="end >= start"):
        proposal_iou(pmap, torch.tensor([[0.5, 0.2]]))


def test_descriptors_match_brute_force() -> None:
    pmap = ProposalMap(12, 5)
    feats = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    desc = proposal_descriptors(feats, pmap)
    mean = proposal_descriptors(feats, pmap, mode="mean")
    assert desc.shape == (pmap.num_proposals, 12) and mean.shape == (pmap.num_proposals, 4)
    for p in range(pmap.num_proposals):
        s, e = int(pmap.starts[p]), int(pmap.ends[p])
        assert torch.allclose(mean[p], feats[s : e + 1].mean(0), atol=1e-6)
        assert torch.allclose(desc[p], torch.cat([feats[s : e + 1].mean(0), feats[s], feats[e]]))
    with pytest.raises(ValueError, match=r"\[T=12, C\]"):
        proposal_descriptors(torch.randn(11, 4), pmap)
    with pytest.raises(ValueError, match="mode"):
        proposal_descriptors(feats, pmap, mode="max")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "T,D,ratio,expected",
    [
        (128, 128, 0.06, {"random": 495, "grid": 496, "block": 484}),
        (128, 64, 0.1, {"random": 617, "grid": 610}),
    ],
    ids=["activitynet", "thumos"],
)
def test_paper_counts(T: int, D: int, ratio: float, expected: dict[str, int]) -> None:
    pmap = ProposalMap(T, D)
    for strategy, count in expected.items():
        idx = sample_proposals(pmap, ratio, strategy, generator=torch.Generator().manual_seed(0))
        assert idx.numel() == count, strategy


def test_grid_is_the_fixed_lattice() -> None:
    pmap = ProposalMap(128, 128)
    idx = sample_proposals(pmap, 0.06, "grid")
    d = (pmap.ends - pmap.starts)[idx]
    s = pmap.starts[idx]
    step = (1 / 0.06) ** 0.5
    lattice = set(torch.arange(1, 128, step, dtype=torch.float64).round().long().tolist())
    assert set(d.tolist()) <= lattice and set(s.tolist()) <= lattice
    assert torch.equal(idx, sample_proposals(pmap, 0.06, "grid"))  # deterministic
    # tiny map where the lattice from 1 has no valid point: falls back to origin 0
    assert sample_proposals(ProposalMap(2, 2), 0.06, "grid").tolist() == [0]


def test_block_is_a_valid_square() -> None:
    pmap = ProposalMap(128, 128)
    positions = set()
    for seed in range(20):
        idx = sample_proposals(pmap, 0.06, "block", generator=torch.Generator().manual_seed(seed))
        d = (pmap.ends - pmap.starts)[idx]
        s = pmap.starts[idx]
        assert idx.numel() == 484
        assert int(d.max() - d.min()) == 21 and int(s.max() - s.min()) == 21
        positions.add((int(d.min()), int(s.min())))
    assert len(positions) > 15
    # a block that cannot fit shrinks until it does
    small = ProposalMap(6, 2)
    idx = sample_proposals(small, 1.0, "block", generator=torch.Generator().manual_seed(0))
    assert idx.numel() == 4


def test_iou_balanced_bins_and_fill() -> None:
    pmap = ProposalMap(100, 100)
    gt = torch.tensor([[0.2, 0.24], [0.6, 0.65]])
    best = proposal_iou(pmap, gt).max(dim=1).values
    bins = (best >= 0.3).long() + (best >= 0.7).long()
    sizes = torch.bincount(bins, minlength=3).tolist()
    num = num_sampled_proposals(pmap.num_proposals, 0.06)
    assert sizes[2] < num // 3  # the high-IoU bin is short: its deficit is filled
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        idx = sample_proposals(pmap, 0.06, "iou_balanced", gt_segments=gt, generator=g)
        assert idx.numel() == num and idx.unique().numel() == num
        counts = torch.bincount(bins[idx], minlength=3).tolist()
        assert counts[2] == sizes[2]
        assert abs(counts[0] - counts[1]) <= 1 and counts[0] + counts[1] == num - sizes[2]
    # no short bin: all three within one
    gt = torch.tensor([[0.2, 0.5], [0.6, 0.9]])
    best = proposal_iou(pmap, gt).max(dim=1).values
    bins = (best >= 0.3).long() + (best >= 0.7).long()
    g = torch.Generator().manual_seed(0)
    idx = sample_proposals(pmap, 0.06, "iou_balanced", gt_segments=gt, generator=g)
    counts = torch.bincount(bins[idx], minlength=3)
    assert int(counts.max() - counts.min()) <= 1
    with pytest.raises(ValueError, match="gt_segments"):
        sample_proposals(pmap, 0.06, "iou_balanced")


def test_scale_balanced_bins_and_fill() -> None:
    pmap = ProposalMap(128, 128)
    rel = pmap.durations.double() / 128
    bins = (rel >= 0.3).long() + (rel > 0.7).long()
    g = torch.Generator().manual_seed(0)
    idx = sample_proposals(pmap, 0.06, "scale_balanced", generator=g)
    counts = torch.bincount(bins[idx], minlength=3)
    assert idx.numel() == 495 and int(counts.max() - counts.min()) <= 1
    # THUMOS map: no proposal is longer than half the video, the large bin is empty
    thumos = ProposalMap(128, 64)
    rel = thumos.durations.double() / 128
    bins = (rel >= 0.3).long() + (rel > 0.7).long()
    idx = sample_proposals(thumos, 0.1, "scale_balanced", generator=g)
    counts = torch.bincount(bins[idx], minlength=3).tolist()
    assert counts[2] == 0 and sum(counts) == 617 and abs(counts[0] - counts[1]) <= 1


def test_feature_guided_aps() -> None:
    pmap = ProposalMap(32, 16)
    feats = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    desc = proposal_descriptors(feats, pmap)
    for strategy in ("fps", "kdpp"):
        g = torch.Generator().manual_seed(0)
        idx = sample_proposals(pmap, 0.1, strategy, features=desc, generator=g)
        assert idx.numel() == num_sampled_proposals(pmap.num_proposals, 0.1)
    with pytest.raises(ValueError, match="feature-guided"):
        sample_proposals(pmap, 0.1, "kdpp")
    idx = sample_proposals(pmap, 0.1, "fps", features=desc, backend="torch", start=0)
    assert 0 in idx.tolist()


STRATEGY_CASES = [s for s in PROPOSAL_STRATEGIES] + ["object"]


@pytest.mark.parametrize("strategy", STRATEGY_CASES)
@pytest.mark.parametrize("T,D", [(16, 16), (20, 8)])
@pytest.mark.parametrize("ratio", [0.06, 0.3, 1.0])
def test_aps_contract(strategy: str, T: int, D: int, ratio: float) -> None:
    pmap = ProposalMap(T, D)
    feats = proposal_descriptors(
        torch.randn(T, 4, generator=torch.Generator().manual_seed(1)), pmap
    )
    gt = torch.tensor([[0.1, 0.4], [0.5, 0.55]])
    chosen = GridSampler() if strategy == "object" else strategy
    rng_before = torch.get_rng_state()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    kwargs = {"generator": g, "features": feats, "gt_segments": gt}
    idx = sample_proposals(pmap, ratio, chosen, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert idx.dtype == torch.long and idx.numel() >= 1
    assert idx.unique().numel() == idx.numel() and torch.equal(idx, idx.sort().values)
    assert int(idx.min()) >= 0 and int(idx.max()) < pmap.num_proposals
    assert bool((pmap.mask_of(idx) <= pmap.valid_mask).all())  # every sample is valid
    if strategy not in ("grid", "block"):
        assert idx.numel() == num_sampled_proposals(pmap.num_proposals, ratio)
    g.set_state(state)
    assert torch.equal(idx, sample_proposals(pmap, ratio, chosen, **kwargs))


def test_aps_bad_inputs() -> None:
    pmap = ProposalMap(16, 16)
    for ratio in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio must be a float in"):
            sample_proposals(pmap, ratio)
    with pytest.raises(ValueError, match="unknown proposal sampling strategy 'dpp'.*iou_balanced"):
        sample_proposals(pmap, 0.1, "dpp")
    with pytest.raises(TypeError, match="takes no options"):
        sample_proposals(pmap, 0.1, "grid", offset="center")
    assert num_sampled_proposals(100, 0.29) == 29  # float guard: 0.29 * 100 = 28.999...
    assert num_sampled_proposals(10, 0.01) == 1
