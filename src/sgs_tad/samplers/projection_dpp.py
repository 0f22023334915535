"""Exact sampling of a projection DPP, the second phase of k-DPP sampling (K&T, Alg. 1).

Given ``Y`` ``[N, k]`` with orthonormal columns, the projection DPP with kernel ``K = Y Yᵀ``
draws exactly ``k`` items, ``P(S) = det(K_S)``. It is sampled by the chain rule: after
choosing rows ``S``, row ``i`` comes next with probability proportional to its squared
residual after projecting out the span of the chosen rows of ``Y``, and these residuals sum
to ``k - |S|``. Both algorithms below do that exactly, with their work in matrix products.

Example:
    >>> import torch
    >>> y = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64)).Q
    >>> sample_projection_dpp(y, torch.Generator().manual_seed(0)).numel()
    3
"""

from __future__ import annotations

import math

import torch

__all__ = ["sample_projection_dpp"]


class _Uniforms:
    """Uniform [0, 1) float64 draws from a generator, fetched in blocks (one call per block)."""

    def __init__(self, generator: torch.Generator | None, block: int) -> None:
        self.generator = generator
        self.block = max(block, 16)
        self.values: list[float] = []

    def pair(self) -> tuple[float, float]:
        if len(self.values) < 2:
            draw = torch.rand(self.block, generator=self.generator, dtype=torch.float64)
            self.values = draw.tolist()[::-1]
        return self.values.pop(), self.values.pop()


def sample_projection_dpp(y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Exact sample of the projection DPP with kernel ``Y Yᵀ`` (``Y`` ``[N, k]`` orthonormal).

    Both algorithms below are exact; the first is faster while the ``k×k`` basis fits in
    cache, the second scales to large ``k`` (``N k²`` flops, all in matrix products).
    """
    if y.shape[1] <= 1024:
        return _projection_dpp_stale_bound(y, generator)
    return _projection_dpp_blocked(y, generator)


def _projection_dpp_stale_bound(
    y: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Projection DPP by the chain rule with float32 upper bounds and float64 acceptance.

    After choosing rows ``S``, row ``i`` comes next with probability proportional to
    ``r_i = ||y_i||² - ||B y_i||²`` (``B``: orthonormal basis of the chosen rows' span); the
    ``r_i`` sum to ``k - |S|``. Proposals come from stale weights ``w_i >= r_i`` (residuals at
    the last refresh, computed in float32, plus a margin that bounds float32's error) and are
    accepted with probability ``r_i / w_i``, ``r_i`` computed in float64 against the whole
    basis: an exact rejection sampler. A refresh (one float32 matrix product over the rows)
    happens when the acceptance rate could drop below one half.
    """
    num_items, k = y.shape
    y32 = y.float()
    sq_norms = (y * y).sum(1)
    # the float32 error of sum_t (y.b_t)^2 is below 2 * sqrt(k) * k * 2^-24 (Cauchy-Schwarz
    # over the basis); the margin keeps the stale weights upper bounds of the true residuals
    margin = 4.0 * math.sqrt(k) * k * 2.0**-24
    snap = sq_norms.clone()
    weights = snap + margin
    cum = weights.cumsum(0)
    basis = y.new_zeros(k, k)  # row t: t-th orthonormal direction of the chosen rows' span
    pending_from = 0  # basis[pending_from:t] not yet subtracted from snap
    chosen: list[int] = []
    uniforms = _Uniforms(generator, 4 * k)
    for t in range(k):
        if float(cum[-1]) > 2.0 * (k - t) + num_items * margin:
            proj = y32 @ basis[pending_from:t].T.float()
            snap = snap - (proj.double() ** 2).sum(1)
            snap[chosen] = 0.0
            weights = snap.clamp(min=0.0) + margin
            cum = weights.cumsum(0)
            pending_from = t
        total = float(cum[-1])
        while True:
            u_pick, u_accept = uniforms.pair()
            i = min(int(torch.searchsorted(cum, u_pick * total, right=True)), num_items - 1)
            row = y[i]
            coef = basis[:t] @ row
            exact = float(sq_norms[i]) - float(coef @ coef)
            # a row (numerically) inside the span has no residual direction left
            if exact > 1e-12 and u_accept * float(weights[i]) < exact:
                break
        resid = row - basis[:t].T @ coef
        if exact < 0.5 * float(sq_norms[i]):
            # cancellation lost digits: orthogonalise once more ("twice is enough")
            resid = resid - basis[:t].T @ (basis[:t] @ resid)
        basis[t] = resid / resid.norm()
        chosen.append(i)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def _projection_dpp_blocked(
    y: torch.Tensor, generator: torch.Generator | None, *, block: int = 256
) -> torch.Tensor:
    """Projection DPP by the chain rule, projecting chosen directions out in blocks.

    Chain rule: after choosing rows ``S``, row ``i`` comes next with probability proportional
    to its squared residual ``r_i`` after projecting out the span of the chosen rows; the
    ``r_i`` sum to ``k - |S|``.

    Done in blocks: at each refresh the directions chosen so far are projected out of every
    row (two matrix products), so that in between ``r_i`` is the row's squared norm minus
    its projection on the few directions chosen since (the *pending* block). Proposals are
    drawn from the residuals at the last refresh, which only ever shrink, and accepted with
    probability ``r_i / r_i(refresh)``: an exact rejection sampler. A refresh happens every
    ``block`` choices, or sooner when the acceptance rate could fall below one half. Cost
    ``O(N k²)`` in matrix products plus ``O(k² · block)`` in the loop.
    """
    num_items, k = y.shape
    coords = y.clone()
    snap = (coords * coords).sum(1)  # residuals at the last refresh (exact then)
    cum = snap.cumsum(0)
    pending = y.new_zeros(block, k)  # new orthonormal directions, in current coordinates
    num_pending = 0
    chosen: list[int] = []
    uniforms = _Uniforms(generator, 4 * k)
    for t in range(k):
        if num_pending == block or (num_pending and float(cum[-1]) > 2.0 * (k - t)):
            # project the pending directions out of every row: two matrix products
            active = pending[:num_pending]
            coords = coords - (coords @ active.T) @ active
            snap = (coords * coords).sum(1)
            snap[chosen] = 0.0  # their residual is rounding noise
            cum = snap.cumsum(0)
            pending.zero_()
            num_pending = 0
        total = float(cum[-1])
        active = pending[:num_pending]
        while True:
            u_pick, u_accept = uniforms.pair()
            i = min(int(torch.searchsorted(cum, u_pick * total, right=True)), num_items - 1)
            row = coords[i]
            coef = active @ row
            bound = float(snap[i])
            exact = bound - float(coef @ coef)
            # a row (numerically) inside the chosen span has no direction left to add
            if exact > 1e-12 and u_accept * bound < exact:
                break
        resid = row - active.T @ coef
        if exact < 0.5 * bound:
            # cancellation lost digits: orthogonalise once more ("twice is enough")
            resid = resid - active.T @ (active @ resid)
        pending[num_pending] = resid / resid.norm()
        num_pending += 1
        chosen.append(i)
    return torch.tensor(sorted(chosen), dtype=torch.long)
