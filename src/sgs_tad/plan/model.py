"""The planner's model: predicted peak memory and time per method, and the recommended K and γ.

The formulas are in the docstring of :mod:`sgs_tad.plan` and explained in ``docs/plan.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sgs_tad.engine.memory import SnippetCost, format_bytes, parse_bytes
from sgs_tad.engine.microbatch import num_sampled
from sgs_tad.engine.prefix import (
    DEFAULT_PREFIX_BUDGET,
    PrefixCost,
    kept_prefix_snippets,
    parse_prefix_budget,
)

__all__ = ["METHODS", "Method", "Prediction", "Recommendation", "predict", "recommend"]

Method = Literal["naive", "checkpoint", "sgs"]
"""A training method: naive end to end, temporal checkpointing, or SGS."""

METHODS: tuple[Method, ...] = ("naive", "checkpoint", "sgs")
"""The training methods :func:`predict` models, in table order."""


@dataclass(frozen=True)
class Prediction:
    """Predicted peak memory and time of one training step on one video of N snippets.

    ``peak_bytes = fixed_bytes + feature_bytes + saved_bytes + workspace_bytes +
    prefix_bytes``; see the module docstring and ``docs/plan.md`` for each method's terms.

    Attributes:
        method: ``"naive"``, ``"checkpoint"`` or ``"sgs"``.
        n: Snippets in the video, N.
        k: Snippets per encoder call with grad (K, capped at N); ``None`` for naive.
        ratio: γ (SGS); 1.0 for the other methods.
        sampled: Snippets whose gradient reaches the encoder (N except for SGS).
        saved_bytes: Bytes held for backward at the peak (activations; checkpoint: the kept
            inputs plus one recomputed micro-batch).
        workspace_bytes: Transient bytes at the peak on top of the saved ones.
        feature_bytes: The features ``[N, C]`` and their gradient.
        fixed_bytes: Parameters, gradients and optimiser state.
        peak_bytes: The predicted peak.
        time_s: Predicted encoder time of the step (forwards and backwards), in seconds.
        prefix_snippets: Sampled snippets whose frozen prefix output SGS keeps for phase 3
            (``reuse_frozen_prefix``; 0 without a ``prefix`` cost).
        prefix_bytes: Bytes of those kept outputs, held from phase 1 to phase 3.
    """

    method: Method
    n: int
    k: int | None
    ratio: float
    sampled: int
    saved_bytes: float
    workspace_bytes: float
    feature_bytes: float
    fixed_bytes: int
    peak_bytes: float
    time_s: float
    prefix_snippets: int = 0
    prefix_bytes: float = 0.0


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def predict(
    cost: SnippetCost,
    *,
    n: int,
    k: int | None = None,
    ratio: float = 1.0,
    method: Method = "sgs",
    prefix: PrefixCost | None = None,
    prefix_budget: bool | int | str = DEFAULT_PREFIX_BUDGET,
) -> Prediction:
    """Predict the peak memory and the encoder time of one video of ``n`` snippets.

    With s, w, x, f the saved, workspace, input and feature bytes per snippet of ``cost``, P its
    fixed bytes, t_fn, t_fg, t_b its per-snippet times, n_s = :func:`~sgs_tad.engine.microbatch.
    num_sampled` (N, γ) and m = min(K, n_s):

    * naive: peak = P + 2Nf + N·s + N·w; time = N·(t_fg + t_b).
    * checkpoint: peak = P + 2Nf + N·x + K·(s + w) (the kept inputs, and one micro-batch
      recomputed during the backward); time = N·(t_fn + t_fg + t_b).
    * sgs: peak = P + 2Nf + max(K·w, m·(s + w)) (phase 1 or one phase-3 micro-batch); time =
      N·t_fn + n_s·(t_fg + t_b). With a frozen prefix (``prefix``, from
      :func:`~sgs_tad.engine.prefix.measure_prefix_cost`) SGS keeps its output for the n_p
      sampled snippets the budget allows (whole micro-batches): the peak gains n_p·h and the
      time loses n_p·t_p (h, t_p: the prefix's output bytes and no-grad time per snippet).

    The input batch held by the data loader and the detector's own memory are not included.

    Args:
        cost: Per-snippet costs from :func:`measure_snippet_cost`.
        n: Snippets per video, N.
        k: Micro-batch size K (required for "checkpoint" and "sgs", ignored for "naive");
            values above N are capped at N.
        ratio: γ ∈ [0, 1] for "sgs" (ignored by the other methods).
        method: "naive", "checkpoint" or "sgs".
        prefix: The frozen prefix's cost (SGS only; ``None``: the encoder has none, or the
            prediction ignores it).
        prefix_budget: SGS's ``reuse_frozen_prefix``.

    Returns:
        The prediction.
    """
    n = _positive_int("n", n)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
    if method == "naive":
        kk: int | None = None
    else:
        if k is None:
            raise ValueError(f"method={method!r} needs k, the micro-batch size (e.g. k=4).")
        kk = min(_positive_int("k", k), n)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}.")
    s, w, x = cost.saved_bytes, cost.workspace_bytes, cost.input_bytes
    features = 2.0 * n * cost.feature_bytes
    step = cost.fwd_grad_s + cost.bwd_s
    if method == "naive":
        sampled, gamma = n, 1.0
        saved, work = n * s, n * w
        seconds = n * step
    elif method == "checkpoint":
        assert kk is not None
        sampled, gamma = n, 1.0
        saved, work = n * x + kk * s, kk * w
        seconds = n * (cost.fwd_nograd_s + step)
    else:
        assert kk is not None
        sampled, gamma = num_sampled(n, float(ratio)), float(ratio)
        m = min(kk, sampled)
        # Phase 1 (K snippets without a graph) or one phase-3 micro-batch, whichever is larger.
        saved = m * s
        work = max(kk * w, m * (s + w)) - saved
        seconds = n * cost.fwd_nograd_s + sampled * step
    kept, kept_bytes = 0, 0.0
    if method == "sgs" and prefix is not None:
        assert kk is not None
        budget = parse_prefix_budget(prefix_budget)
        kept = kept_prefix_snippets(sampled, kk, prefix.bytes_per_snippet, budget)
        kept_bytes = kept * prefix.bytes_per_snippet
        seconds -= kept * prefix.seconds_per_snippet
    return Prediction(
        method=method,
        n=n,
        k=kk,
        ratio=gamma,
        sampled=sampled,
        saved_bytes=saved,
        workspace_bytes=work,
        feature_bytes=features,
        fixed_bytes=cost.fixed_bytes,
        peak_bytes=cost.fixed_bytes + features + saved + work + kept_bytes,
        time_s=seconds,
        prefix_snippets=kept,
        prefix_bytes=kept_bytes,
    )


@dataclass(frozen=True)
class Recommendation:
    """SGS settings for a memory (and time) budget, from :func:`recommend`.

    Attributes:
        k: The largest micro-batch size K (≤ N) whose peak fits the memory budget at γ = 1.
        ratio: The largest γ whose predicted time fits the time budget (1.0 without one).
        prediction: The SGS prediction at ``k`` and ``ratio``.
        naive_fits: Whether naive end-to-end training would fit the memory budget too.
        budget_bytes: The memory budget.
        time_budget_s: The time budget, if any.
    """

    k: int
    ratio: float
    prediction: Prediction
    naive_fits: bool
    budget_bytes: int
    time_budget_s: float | None


def recommend(
    cost: SnippetCost,
    *,
    n: int,
    budget_bytes: int | str,
    time_budget_s: float | None = None,
    prefix: PrefixCost | None = None,
) -> Recommendation:
    """The largest K that fits ``budget_bytes`` and the largest γ that fits ``time_budget_s``.

    K is chosen at γ = 1 (the most memory any γ needs with that K), so every γ fits. γ is
    chosen among j/N, j = N … 1 (every distinct sample count).

    Args:
        cost: Per-snippet costs from :func:`measure_snippet_cost`.
        n: Snippets per video, N.
        budget_bytes: Memory for the encoder side of training: an int of bytes or a string for
            :func:`parse_bytes` (``"16GB"``). Leave out what the detector needs.
        time_budget_s: Seconds of encoder time per video; ``None``: γ = 1.
        prefix: The frozen prefix's cost, as for :func:`predict` (kept at the default budget).

    Returns:
        The recommendation.

    Raises:
        ValueError: Not even one snippet per micro-batch fits the memory budget, or not even
            one sampled snippet fits the time budget; the message gives the measured costs.
    """
    n = _positive_int("n", n)
    budget = parse_bytes(budget_bytes)
    best: Prediction | None = None
    for k in range(n, 0, -1):
        pred = predict(cost, n=n, k=k, ratio=1.0, method="sgs", prefix=prefix)
        if pred.peak_bytes <= budget:
            best = pred
            break
    if best is None:
        one = predict(cost, n=n, k=1, ratio=1.0, method="sgs", prefix=prefix)
        raise ValueError(
            f"memory budget {format_bytes(budget)} ({budget} bytes) cannot fit SGS with one "
            f"snippet per micro-batch at N={n}: predicted {format_bytes(one.peak_bytes)} = "
            f"{format_bytes(cost.fixed_bytes)} fixed (parameters, gradients, optimiser state) "
            f"+ {format_bytes(cost.saved_bytes)} saved for backward per snippet + "
            f"{format_bytes(cost.workspace_bytes)} workspace per snippet + "
            f"{format_bytes(one.feature_bytes)} of features. Raise the budget, shorten or "
            "shrink the snippets, or freeze more of the encoder."
        )
    assert best.k is not None
    k = best.k
    if time_budget_s is None:
        chosen = best
    else:
        if (
            isinstance(time_budget_s, bool)
            or not isinstance(time_budget_s, (int, float))
            or time_budget_s <= 0
        ):
            raise ValueError(f"time_budget_s must be a number > 0 or None, got {time_budget_s!r}.")
        found: Prediction | None = None
        for j in range(n, 0, -1):
            pred = predict(cost, n=n, k=k, ratio=j / n, method="sgs", prefix=prefix)
            if pred.time_s <= time_budget_s:
                found = pred
                break
        if found is None:
            least = predict(cost, n=n, k=k, ratio=1 / n, method="sgs", prefix=prefix)
            raise ValueError(
                f"time budget {time_budget_s:g} s cannot fit SGS at N={n}: with one sampled "
                f"snippet it takes {least.time_s:.3g} s ({cost.fwd_nograd_s:.3g} s per snippet "
                f"for the no-grad forward of all {n}, {cost.fwd_grad_s + cost.bwd_s:.3g} s per "
                "sampled snippet for the forward and backward). Raise the time budget or lower N."
            )
        chosen = found
    naive = predict(cost, n=n, method="naive")
    return Recommendation(
        k=k,
        ratio=chosen.ratio,
        prediction=chosen,
        naive_fits=naive.peak_bytes <= budget,
        budget_bytes=budget,
        time_budget_s=None if time_budget_s is None else float(time_budget_s),
    )
