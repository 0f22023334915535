"""Projection DPP: both chain-rule algorithms against enumerated subset probabilities."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from sgs_tad.samplers import projection_dpp


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q


def _pvalue(draw, y: torch.Tensor, num_draws: int) -> float:  # type: ignore[no-untyped-def]
    n, k = y.shape
    kernel = y @ y.T
    subsets = list(itertools.combinations(range(n), k))
    probs = torch.tensor(
        [float(torch.linalg.det(kernel[list(s)][:, list(s)])) for s in subsets],
        dtype=torch.float64,
    )
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-9)  # P(S) = det(K_S) sums to 1
    counts = dict.fromkeys(subsets, 0)
    for _ in range(num_draws):
        counts[tuple(draw().tolist())] += 1
    keep = probs * num_draws >= 5
    obs = torch.tensor([counts[s] for s in subsets], dtype=torch.float64)
    obs_kept = torch.cat([obs[keep], obs[~keep].sum().view(1)])
    exp_kept = torch.cat([probs[keep], probs[~keep].sum().view(1)]) * num_draws
    if float(exp_kept[-1]) < 5:  # pool the rare remainder into the smallest kept cell
        obs_kept[-2] += obs_kept[-1]
        exp_kept[-2] += exp_kept[-1]
        obs_kept, exp_kept = obs_kept[:-1], exp_kept[:-1]
    exp_kept = exp_kept * float(obs_kept.sum()) / float(exp_kept.sum())
    return float(chisquare(obs_kept.numpy(), exp_kept.numpy()).pvalue)


@pytest.mark.parametrize(
    "algorithm",
    [
        projection_dpp._projection_dpp_stale_bound,
        lambda y, g: projection_dpp._projection_dpp_blocked(y, g, block=1),
    ],
    ids=["stale-bound", "blocked"],
)
def test_exact_against_enumeration(algorithm) -> None:  # type: ignore[no-untyped-def]
    y = _orthonormal(7, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    assert _pvalue(lambda: algorithm(y, g), y, 3000) > 1e-3


def test_dispatch_and_contract() -> None:
    y = _orthonormal(50, 20, seed=1)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    idx = projection_dpp.sample_projection_dpp(y, g)
    assert idx.numel() == 20 and idx.unique().numel() == 20
    assert torch.equal(idx, idx.sort().values)
    g.set_state(state)
    assert torch.equal(idx, projection_dpp.sample_projection_dpp(y, g))
    # a coordinate projection picks exactly its support
    support = torch.zeros(6, 2, dtype=torch.float64)
    support[1, 0] = support[4, 1] = 1.0
    assert projection_dpp.sample_projection_dpp(support, g).tolist() == [1, 4]
