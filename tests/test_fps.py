"""Farthest point sampling: the max-min property, ties, and identity with torch-cluster."""

from __future__ import annotations

import pytest
import torch

from sgs_tad.samplers import FPSSampler, farthest_point_sampling, make_sampler
from sgs_tad.samplers import fps as fps_module


def _brute_force_fps(x: torch.Tensor, k: int, start: int) -> list[int]:
    """Textbook FPS in float64, ties to the first index in cyclic order after ``start``."""
    n = x.shape[0]
    order = [(start + j) % n for j in range(n)]
    chosen = [start]
    dist = {i: float(((x[i] - x[start]) ** 2).sum()) for i in range(n)}
    while len(chosen) < k:
        best = max((i for i in order if i not in chosen), key=lambda i: dist[i])
        chosen.append(best)
        for i in range(n):
            dist[i] = min(dist[i], float(((x[i] - x[best]) ** 2).sum()))
    return chosen


@pytest.mark.parametrize("start", [0, 5, 29])
def test_matches_brute_force(start: int) -> None:
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(start), dtype=torch.float64)
    got = farthest_point_sampling(x, 12, start=start, backend="torch")
    assert got.tolist() == _brute_force_fps(x, 12, start)


def test_max_min_property() -> None:
    """Each new point is the one farthest from those chosen before it."""
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    order = farthest_point_sampling(x, 25, start=7)
    assert order[0] == 7
    for t in range(1, 25):
        d = torch.cdist(x.double(), x[order[:t]].double()).min(dim=1).values
        assert float(d[order[t]]) == pytest.approx(float(d.max()), rel=1e-5)
    # greedy FPS is a 2-approximation of the best covering radius; at least it beats random
    fps_radius = torch.cdist(x, x[order]).min(dim=1).values.max()
    rand = torch.randperm(200, generator=torch.Generator().manual_seed(1))[:25]
    assert fps_radius < torch.cdist(x, x[rand]).min(dim=1).values.max()


def test_ties_break_cyclically_after_start() -> None:
    x = torch.tensor([[0.0], [1.0], [-1.0], [1.0], [-1.0]])
    # from 0, points 1..4 tie at distance 1: the first after the start wins
    assert farthest_point_sampling(x, 2, start=0).tolist() == [0, 1]
    y = torch.tensor([[1.0], [-1.0], [0.0], [1.0], [-1.0]])
    # from 2 the cyclic order is 3, 4, 0, 1
    assert farthest_point_sampling(y, 2, start=2).tolist() == [2, 3]


def test_duplicates_still_give_distinct_indices() -> None:
    x = torch.zeros(6, 3)
    x[4] = 1.0
    order = farthest_point_sampling(x, 5, start=1)
    assert order.tolist()[:2] == [1, 4]
    assert order.unique().numel() == 5


def test_sampler_start_option() -> None:
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    fixed = FPSSampler(start=3)
    a = fixed(50, 10, features=x, generator=torch.Generator().manual_seed(0))
    b = fixed(50, 10, features=x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and 3 in a.tolist()
    with pytest.raises(ValueError, match="start"):
        FPSSampler(start="first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"start must be an index in \[0, 50\)"):
        FPSSampler(start=50)(50, 3, features=x)


def test_backend_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown FPS backend 'cuda'"):
        make_sampler("fps", backend="cuda")
    monkeypatch.setattr(fps_module, "has_torch_cluster", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "sgs_tad\[fps\]"'):
        make_sampler("fps", backend="torch_cluster")
    # auto falls back to the pure-torch backend
    x = torch.randn(20, 3)
    assert make_sampler("fps", backend="auto")(20, 4, features=x).numel() == 4


@pytest.mark.parametrize("num_items,k", [(7, 1), (7, 7), (100, 6), (128, 38), (1000, 333)])
def test_cluster_ratio_gives_exact_count(num_items: int, k: int) -> None:
    ratio = fps_module._cluster_ratio(num_items, k)
    assert ratio.dtype == torch.float32
    assert int(torch.ceil(torch.tensor(float(num_items)) * ratio)) == k


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_items,dim,k", [(64, 3, 10), (500, 32, 30), (1000, 256, 60)])
def test_identical_to_torch_cluster(seed: int, num_items: int, dim: int, k: int) -> None:
    torch_cluster = pytest.importorskip("torch_cluster")
    x = torch.randn(num_items, dim, generator=torch.Generator().manual_seed(seed))
    ours = farthest_point_sampling(x, k, start=0, backend="torch")
    ratio = fps_module._cluster_ratio(num_items, k)
    theirs = torch_cluster.fps(x, None, ratio, random_start=False)
    assert theirs.numel() == k
    assert ours.tolist() == theirs.tolist()
    start = 17 % num_items
    a = farthest_point_sampling(x, k, start=start, backend="torch")
    b = farthest_point_sampling(x, k, start=start, backend="torch_cluster")
    assert a.tolist() == b.tolist()
    # integer-valued points: many exact ties, broken the same way
    xi = torch.randint(0, 3, (num_items, 2), generator=torch.Generator().manual_seed(seed))
    xi = xi.float()
    a = farthest_point_sampling(xi, 5, start=start, backend="torch")
    b = farthest_point_sampling(xi, 5, start=start, backend="torch_cluster")
    assert a.tolist() == b.tolist()


def test_auto_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fps_module, "has_torch_cluster", lambda: True)
    assert fps_module._resolve_backend("auto") == "torch_cluster"
    monkeypatch.setattr(fps_module, "has_torch_cluster", lambda: False)
    assert fps_module._resolve_backend("auto") == "torch"
