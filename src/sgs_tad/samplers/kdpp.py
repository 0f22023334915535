"""Exact k-DPP sampling with a low-rank-plus-identity kernel (paper §3.5, App. G, Alg. 2).

A k-DPP with likelihood kernel ``L`` draws a set ``S`` of ``k`` items with probability
proportional to ``det(L_S)``: sets of mutually dissimilar items are likely, so the sample
covers the feature space without FPS's greed for outliers. Here ``L = X̂ X̂ᵀ + ε I`` with
``X̂`` the L2-normalised features (cosine similarity, §3.5; ``normalize=False`` uses the raw
features as in Alg. 2) and ``ε = 1e-2``.

The ``native`` backend is exact and exploits ``C ≪ N``:

1. *Spectrum without an N×N eigendecomposition.* The eigenpairs of ``X̂ X̂ᵀ`` with nonzero
   eigenvalue come from the ``C×C`` matrix ``X̂ᵀ X̂ = V Λ Vᵀ``: ``U = X̂ V Λ^{-1/2}``
   (re-orthonormalised when the spectrum is ill-conditioned; the ``N×N`` matrix is used
   directly when ``N <= C``). ``L`` has eigenvalues ``λ_j + ε`` on ``U``'s ``r`` columns and ``ε``,
   ``N - r`` times, on their orthogonal complement.
2. *Which eigenvectors (Kulesza & Taskar, Alg. 8).* The number ``m`` of null-space
   eigenvectors has ``P(m) ∝ e_{k-m}(λ + ε) · C(N - r, m) · ε^m``; the ``k - m`` others are
   chosen from the ``r`` nonzero ones by the usual backward pass over elementary symmetric
   polynomials ``e_l`` — all in log space, so nothing overflows at ``N = 10⁴``.
3. *The null-space part implicitly.* Which ``m`` of the ``N - r`` degenerate eigenvectors are
   picked depends on an arbitrary basis; the k-DPP does not, so averaging over a uniformly
   random basis is still exact, and then the span of the picked ones is a uniformly random
   ``m``-dimensional subspace of the complement: Gaussian vectors projected onto the
   complement and orthonormalised. No ``N×N`` basis is formed.
4. *Projection DPP (Alg. 1)* on the ``k`` orthonormal columns ``Y``, by the chain rule:
   item ``i`` with probability ∝ its squared residual after projecting out the rows already
   chosen. Residuals are refreshed in blocks (a matrix product) and the draw in between uses
   exact rejection against the stale residuals, which only ever decrease; a refresh happens
   when the acceptance rate could fall below ½.

Cost: ``O(N C² + N k²)`` flops, mostly matrix products; about 0.45 s single-threaded at
``N = 8,256``, ``C = 256``, ``k = 495`` (docs/benchmarks_samplers.md). Everything that
decides the sample is computed in float64; float32 is used only for upper bounds of a
rejection step, with a margin that covers its rounding.

The ``dppy`` backend (``pip install "sgs_tad[dpp]"``) is the paper's: ``FiniteDPP`` on the
dense ``N×N`` kernel. It is O(N³) and, with dppy 0.3.3, its elementary symmetric polynomials
overflow at a few thousand items and it silently returns wrong samples: use it as a
small-``N`` reference only.

Example:
    >>> import torch
    >>> x = torch.eye(3).repeat_interleave(2, dim=0)   # 3 pairs of identical items
    >>> idx = sample_kdpp(x, 3, eps=1e-6, generator=torch.Generator().manual_seed(0))
    >>> sorted(set((idx // 2).tolist()))               # one item from each pair
    [0, 1, 2]
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

import torch

from sgs_tad.samplers.base import check_features, check_request, random_seed
from sgs_tad.samplers.projection_dpp import sample_projection_dpp

__all__ = ["KDPPSampler", "kdpp_spectrum", "log_elementary_symmetric", "sample_kdpp"]

Backend = Literal["auto", "native", "dppy"]


def log_elementary_symmetric(log_values: torch.Tensor, max_order: int) -> torch.Tensor:
    """Log elementary symmetric polynomials of all prefixes of a list of positive values.

    Args:
        log_values: ``[n]`` logs of the values (float64).
        max_order: highest order ``K`` needed.

    Returns:
        ``[n + 1, K + 1]`` table ``E`` with ``E[i, l] = log e_l(values[:i])`` (``-inf`` where
        ``e_l = 0``, i.e. ``l > i``).
    """
    n = log_values.numel()
    table = torch.full((n + 1, max_order + 1), -math.inf, dtype=torch.float64)
    table[:, 0] = 0.0
    for i in range(1, n + 1):
        prev = table[i - 1]
        # e_l(v_1..v_i) = e_l(v_1..v_{i-1}) + v_i e_{l-1}(v_1..v_{i-1})
        table[i, 1:] = torch.logaddexp(prev[1:], log_values[i - 1] + prev[:-1])
    return table


def _cholesky_qr(a: torch.Tensor) -> torch.Tensor:
    """Orthonormalise the columns of a well-conditioned tall matrix ``a`` (CholeskyQR).

    Two matrix products instead of Householder QR's many thin updates; exact enough when the
    columns are close to orthonormal or random, which is the only way it is used here.
    """
    if a.shape[1] == 0:
        return a
    chol = torch.linalg.cholesky(a.T @ a)
    # a = q chol^T  =>  q = a chol^{-T}
    return torch.linalg.solve_triangular(chol.T, a, upper=True, left=False)


def kdpp_spectrum(
    features: torch.Tensor, *, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzero eigenpairs of ``X̂ X̂ᵀ``, from the ``C×C`` dual matrix ``X̂ᵀ X̂`` when ``C < N``.

    Args:
        features: ``[N, C]``.
        normalize: L2-normalise the rows first (zero rows stay zero).

    Returns:
        ``(eigenvalues [r], eigenvectors [N, r])`` in float64, ascending, eigenvectors
        orthonormal, ``r`` the numerical rank (eigenvalues below ``1e-10 · λ_max`` count as
        zero, i.e. join the ``ε`` eigenspace of ``L``).
    """
    x = features.detach().to(torch.float64).cpu()
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-300)
    primal = x.shape[0] <= x.shape[1]  # N <= C: the N×N matrix is the smaller one
    lam, vec = torch.linalg.eigh(x @ x.T if primal else x.T @ x)
    lam_max = float(lam.max()) if lam.numel() else 0.0
    keep = lam > max(lam_max * 1e-10, 1e-300)
    lam, vec = lam[keep], vec[:, keep]
    if primal or lam.numel() == 0:  # (all-zero features: L = eps I, no nonzero eigenpair)
        return lam, vec if primal else x.new_zeros(x.shape[0], 0)
    u = (x @ vec) / lam.sqrt()
    # U = X V Λ^{-1/2} loses orthogonality like machine eps · λ_max / λ_min (about 1e-16 per
    # unit of condition number): restore it with one CholeskyQR pass when that could exceed
    # 1e-10, i.e. for features whose spectrum decays steeply
    if lam_max > 1e6 * float(lam[0]):
        u = _cholesky_qr(u)
    return lam, u


def _select_spectrum(
    lam: torch.Tensor, num_items: int, k: int, eps: float, generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Phase 1: which nonzero eigenvectors, and how many null-space ones (exact)."""
    r = lam.numel()
    null_dim = num_items - r
    log_mu = torch.log(lam + eps)
    table = log_elementary_symmetric(log_mu, min(k, r))
    lo, hi = max(0, k - r), min(k, null_dim) if eps > 0 else 0
    if lo > hi:
        raise ValueError(
            f"the k-DPP kernel has rank {r} < k={k} with eps={eps}: no set of {k} items has "
            "positive probability; use eps > 0 or a smaller k."
        )
    m = torch.arange(lo, hi + 1, dtype=torch.float64)
    log_w = table[r, (k - m).long()]
    if null_dim > 0 and eps > 0:
        log_w = log_w + (
            math.lgamma(null_dim + 1)
            - torch.lgamma(m + 1)
            - torch.lgamma(null_dim - m + 1)
            + m * math.log(eps)
        )
    probs = torch.softmax(log_w, dim=0)
    num_null = lo + int(torch.multinomial(probs, 1, generator=generator).item())
    # backward pass: keep eigenvector n with prob mu_n e_{l-1}(mu_<n) / e_l(mu_<=n)
    need = k - num_null
    chosen: list[int] = []
    coins = torch.rand(r, generator=generator, dtype=torch.float64).tolist()
    for n in range(r, 0, -1):
        if need == 0:
            break
        p = math.exp(float(log_mu[n - 1] + table[n - 1, need - 1] - table[n, need]))
        if coins[n - 1] < p:
            chosen.append(n - 1)
            need -= 1
    return chosen, num_null


def _complement_basis(
    q: torch.Tensor, dim: int, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniformly random ``dim``-dim orthonormal basis of the complement of ``q``'s columns.

    Gaussian vectors projected onto the complement span a uniformly (Haar) distributed
    subspace of it; CholeskyQR of such a random matrix is well conditioned.
    """
    g = torch.randn(q.shape[0], dim, generator=generator, dtype=torch.float64)
    g = g - q @ (q.T @ g)
    # R^{-1} of a well-conditioned Gaussian keeps the columns orthogonal to q
    return _cholesky_qr(g)


def _sample_native(
    features: torch.Tensor,
    k: int,
    eps: float,
    normalize: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    num_items = features.shape[0]
    lam, q = kdpp_spectrum(features, normalize=normalize)
    chosen, num_null = _select_spectrum(lam, num_items, k, eps, generator)
    parts = [q[:, sorted(chosen)]]
    if num_null:
        parts.append(_complement_basis(q, num_null, generator))
    return sample_projection_dpp(torch.cat(parts, dim=1), generator)


def _sample_dppy(
    features: torch.Tensor,
    k: int,
    eps: float,
    normalize: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    import numpy as np
    from dppy.finite_dpps import FiniteDPP

    x = features.detach().to(torch.float64).cpu()
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-300)
    kernel = (x @ x.T + eps * torch.eye(x.shape[0], dtype=torch.float64)).numpy()
    dpp = FiniteDPP("likelihood", L=kernel)
    rng = np.random.RandomState(random_seed(generator))
    sample = dpp.sample_exact_k_dpp(size=k, random_state=rng)
    return torch.as_tensor(sorted(int(i) for i in sample), dtype=torch.long)


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "native", "dppy"):
        raise ValueError(f"unknown k-DPP backend {backend!r}; choose 'auto', 'native' or 'dppy'.")
    if backend == "dppy" and importlib.util.find_spec("dppy") is None:
        raise ImportError(
            "k-DPP backend 'dppy' needs the dppy package: pip install \"sgs_tad[dpp]\" "
            "(or use backend='native', exact and much faster)."
        )
    return "native" if backend == "auto" else backend


def sample_kdpp(
    features: torch.Tensor,
    k: int,
    *,
    eps: float = 1e-2,
    normalize: bool = True,
    backend: Backend = "auto",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``k`` items from the k-DPP with kernel ``L = X̂ X̂ᵀ + eps·I``.

    Args:
        features: ``[N, C]`` item features ``X``.
        k: set size, ``0 <= k <= N``.
        eps: ridge ``ε >= 0`` (paper: 1e-2); ``eps = 0`` needs rank(X) >= k.
        normalize: cosine kernel (rows L2-normalised); ``False`` uses ``X`` as is (Alg. 2).
        backend: ``"native"`` (exact, default; ``"auto"`` picks it) or ``"dppy"``.
        generator: source of every random choice (dppy gets a seed drawn from it).

    Returns:
        Sorted ``LongTensor [k]``.
    """
    num_items = features.shape[0] if isinstance(features, torch.Tensor) and features.dim() else 0
    check_request(num_items, k)
    feats = check_features(features, num_items, "kdpp")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r} (paper: 1e-2).")
    chosen = _resolve_backend(backend)
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    if chosen == "dppy":
        return _sample_dppy(feats, k, float(eps), normalize, generator)
    return _sample_native(feats, k, float(eps), normalize, generator)


class KDPPSampler:
    """k-DPP sampling as a :class:`~sgs_tad.samplers.Sampler` (feature-guided).

    Args:
        eps: ridge of ``L = X̂ X̂ᵀ + eps·I`` (default 1e-2, as in the paper).
        normalize: ``True`` (default) for the cosine-similarity kernel of §3.5; ``False`` for
            raw features as in Alg. 2.
        backend: ``"auto"`` | ``"native"`` | ``"dppy"``; see the module docstring.
    """

    requires_features = True

    def __init__(
        self, *, eps: float = 1e-2, normalize: bool = True, backend: Backend = "auto"
    ) -> None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a float >= 0, got {eps!r} (paper: 1e-2).")
        _resolve_backend(backend)
        self.eps = float(eps)
        self.normalize = normalize
        self.backend = backend

    def __call__(
        self,
        num_items: int,
        num_samples: int,
        *,
        features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return ``num_samples`` sorted indices drawn from the k-DPP on ``features``."""
        check_request(num_items, num_samples)
        feats = check_features(features, num_items, "kdpp")
        return sample_kdpp(
            feats,
            num_samples,
            eps=self.eps,
            normalize=self.normalize,
            backend=self.backend,
            generator=generator,
        )

    def __repr__(self) -> str:
        return (
            f"KDPPSampler(eps={self.eps!r}, normalize={self.normalize!r}, "
            f"backend={self.backend!r})"
        )
