"""k-DPP: exactness against enumerated subsets and a dense eigendecomposition, dppy, errors."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from sgs_tad.samplers import KDPPSampler, RandomSampler, make_sampler, projection_dpp, sample_kdpp
from sgs_tad.samplers import kdpp as kdpp_module

ALPHA = 1e-3  # fixed seeds: each test is deterministic; a wrong sampler fails by a wide margin


def _kernel(x: torch.Tensor, eps: float, normalize: bool = True) -> torch.Tensor:
    x = x.double()
    if normalize:
        x = x / x.norm(dim=1, keepdim=True)
    return x @ x.T + eps * torch.eye(x.shape[0], dtype=torch.float64)


def _exact_subset_probs(kernel: torch.Tensor, k: int) -> dict[tuple[int, ...], float]:
    """P(S) = det(L_S) / sum_|T|=k det(L_T), by enumeration."""
    subsets = list(itertools.combinations(range(kernel.shape[0]), k))
    dets = [float(torch.linalg.det(kernel[list(s)][:, list(s)])) for s in subsets]
    total = sum(dets)
    return {s: d / total for s, d in zip(subsets, dets)}


def _chi2_pvalue(draw, probs: dict[tuple[int, ...], float], num_draws: int) -> float:  # type: ignore[no-untyped-def]
    counts = dict.fromkeys(probs, 0)
    for _ in range(num_draws):
        counts[tuple(draw().tolist())] += 1
    subsets = sorted(probs, key=probs.get)  # type: ignore[arg-type]
    # pool the rarest subsets so that every expected count is at least 5
    obs, exp, acc_o, acc_e = [], [], 0, 0.0
    for s in subsets:
        acc_o += counts[s]
        acc_e += probs[s] * num_draws
        if acc_e >= 5:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o, acc_e = 0, 0.0
    obs[-1] += acc_o
    exp[-1] += acc_e
    return float(chisquare(obs, exp).pvalue)


def _features(n: int, c: int, seed: int) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_log_elementary_symmetric_matches_brute_force() -> None:
    values = torch.tensor([0.5, 2.0, 3.0, 0.1, 7.0], dtype=torch.float64)
    table = kdpp_module.log_elementary_symmetric(values.log(), 5)
    for n in range(6):
        for order in range(6):
            brute = sum(math.prod(c) for c in itertools.combinations(values[:n].tolist(), order))
            got = math.exp(float(table[n, order]))
            assert got == pytest.approx(brute, rel=1e-12, abs=0.0), (n, order)


def test_log_elementary_symmetric_does_not_overflow() -> None:
    # e_500 of 8,000 values around 30 is ~1e1700: far beyond float64, fine in log space
    values = torch.full((8000,), 30.0, dtype=torch.float64)
    table = kdpp_module.log_elementary_symmetric(values[:300].log(), 500)
    assert torch.isfinite(table[300, :301]).all()
    expected = math.lgamma(301) - math.lgamma(151) - math.lgamma(151) + 150 * math.log(30.0)
    assert float(table[300, 150]) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    "k,eps,normalize,channels",
    [(3, 0.1, True, 3), (5, 0.1, True, 3), (2, 0.5, False, 3), (3, 0.1, True, 10)],
    ids=["k<rank", "k>rank-null-space", "raw-features", "N<=C-primal"],
)
def test_subset_frequencies_match_enumeration(
    k: int, eps: float, normalize: bool, channels: int
) -> None:
    # C = 3 < N = 8: rank 3, the eps eigenspace has dimension 5; C = 10: no null space
    x = _features(8, channels, seed=k)
    probs = _exact_subset_probs(_kernel(x, eps, normalize), k)
    g = torch.Generator().manual_seed(0)
    pvalue = _chi2_pvalue(
        lambda: sample_kdpp(x, k, eps=eps, normalize=normalize, generator=g), probs, 2000
    )
    assert pvalue > ALPHA


def test_blocked_projection_algorithm_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The large-k algorithm, forced with a tiny block so that it refreshes mid-sample."""

    def blocked(y, generator):  # type: ignore[no-untyped-def]
        return projection_dpp._projection_dpp_blocked(y, generator, block=2)

    monkeypatch.setattr(kdpp_module, "sample_projection_dpp", blocked)
    x = _features(8, 3, seed=5)
    probs = _exact_subset_probs(_kernel(x, 0.1), 5)
    g = torch.Generator().manual_seed(1)
    assert _chi2_pvalue(lambda: sample_kdpp(x, 5, eps=0.1, generator=g), probs, 2000) > ALPHA


def test_chi_square_can_fail() -> None:
    """The same test rejects uniform subsets and a k-DPP with the wrong ridge."""
    x = _features(8, 3, seed=5)
    probs = _exact_subset_probs(_kernel(x, 0.1), 5)
    g = torch.Generator().manual_seed(0)
    assert _chi2_pvalue(lambda: RandomSampler()(8, 5, generator=g), probs, 2000) < ALPHA
    wrong = _chi2_pvalue(lambda: sample_kdpp(x, 5, eps=1.0, generator=g), probs, 2000)
    assert wrong < ALPHA


def test_inclusion_marginals_match_dense_eigendecomposition() -> None:
    """N = 60, rank 4: marginals from an independent N×N eigendecomposition."""
    n, c, k, eps, draws = 60, 4, 10, 1e-2, 600
    x = _features(n, c, seed=3)
    lam, vec = torch.linalg.eigh(_kernel(x, eps))
    table = kdpp_module.log_elementary_symmetric(lam.log(), k)
    # P(i in S) = sum_j lam_j e_{k-1}(lam without j) / e_k(lam) * v_j(i)^2
    weights = torch.empty(n, dtype=torch.float64)
    for j in range(n):
        rest = torch.cat([lam[:j], lam[j + 1 :]]).log()
        e_rest = kdpp_module.log_elementary_symmetric(rest, k)[n - 1, k - 1]
        weights[j] = torch.exp(lam[j].log() + e_rest - table[n, k])
    marginals = (vec**2) @ weights
    assert float(marginals.sum()) == pytest.approx(k, rel=1e-9)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(n, dtype=torch.float64)
    for _ in range(draws):
        counts[sample_kdpp(x, k, eps=eps, generator=g)] += 1
    z = (counts - draws * marginals) / (draws * marginals * (1 - marginals)).sqrt()
    assert float(z.abs().max()) < 4.5, z
    assert float((z**2).sum()) < n + 6 * math.sqrt(2 * n)  # chi-square-like total


def test_degenerate_features() -> None:
    g = torch.Generator().manual_seed(0)
    # all-zero features: L = eps * I, every 3-subset equally likely
    counts = torch.zeros(6)
    for _ in range(600):
        idx = sample_kdpp(torch.zeros(6, 4), 3, generator=g)
        assert idx.unique().numel() == 3
        counts[idx] += 1
    assert torch.all((counts - 300).abs() < 60), counts
    assert sample_kdpp(torch.randn(1, 4), 1, generator=g).tolist() == [0]
    half = sample_kdpp(torch.randn(20, 4).half(), 5, generator=g)
    assert half.numel() == 5 and half.unique().numel() == 5


def test_diversity_never_picks_two_copies() -> None:
    x = torch.eye(4).repeat_interleave(3, dim=0)  # 4 groups of 3 identical items
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = sample_kdpp(x, 4, eps=1e-8, generator=g)
        assert sorted((idx // 3).tolist()) == [0, 1, 2, 3]


def test_proposal_scale_is_fast_and_valid() -> None:
    x = torch.randn(8256, 256, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    idx = make_sampler("kdpp")(8256, 495, features=x, generator=g)
    elapsed = time.perf_counter() - start
    assert idx.numel() == 495 and idx.unique().numel() == 495
    assert elapsed < 20.0  # ~1 s on an idle 2-core CPU; generous for loaded CI


def test_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _features(10, 3, seed=0)
    with pytest.raises(ValueError, match="rank 3 < k=5"):
        sample_kdpp(x, 5, eps=0.0)
    assert sample_kdpp(x, 3, eps=0.0, generator=torch.Generator().manual_seed(0)).numel() == 3
    with pytest.raises(ValueError, match="eps must be"):
        KDPPSampler(eps=-1.0)
    with pytest.raises(ValueError, match="unknown k-DPP backend 'exact'"):
        KDPPSampler(backend="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_samples=11"):
        sample_kdpp(x, 11)
    monkeypatch.setattr(kdpp_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r'pip install "sgs_tad\[dpp\]"'):
        KDPPSampler(backend="dppy")


def test_dppy_backend_agrees_in_distribution() -> None:
    pytest.importorskip("dppy")
    x = _features(6, 2, seed=7)
    probs = _exact_subset_probs(_kernel(x, 0.1), 2)
    g = torch.Generator().manual_seed(0)
    sampler = KDPPSampler(eps=0.1, backend="dppy")
    draws_dppy = [tuple(sampler(6, 2, features=x, generator=g).tolist()) for _ in range(500)]
    assert _chi2_pvalue(iter(torch.tensor(d) for d in draws_dppy).__next__, probs, 500) > ALPHA
    native = KDPPSampler(eps=0.1)
    draws_native = [tuple(native(6, 2, features=x, generator=g).tolist()) for _ in range(500)]
    subsets = sorted(probs)
    table = [[d.count(s) for s in subsets] for d in (draws_dppy, draws_native)]
    keep = [j for j in range(len(subsets)) if table[0][j] + table[1][j] > 0]
    _, pvalue, _, _ = chi2_contingency([[row[j] for j in keep] for row in table])
    assert pvalue > ALPHA
    # the generator makes the dppy backend reproducible too
    a = sampler(6, 2, features=x, generator=torch.Generator().manual_seed(3))
    b = sampler(6, 2, features=x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
