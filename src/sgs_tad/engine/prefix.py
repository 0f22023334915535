"""The frozen prefix: phase 3 re-runs only the encoder stages that train.

Phase 3 re-runs each sampled micro-batch with grad to back-propagate its feature gradient into
the encoder. The leading stages of an encoder that have no trainable parameter (the paper
freezes the stem and first stages of TSM-R50; ``frozen_stages`` in mmaction2 and OpenTAD) need
no gradient: nothing flows into them, their input requires none. So phase 1 keeps their output
for the sampled snippets, and phase 3 runs only the stages after them on it. The gradient is the
same (the kept tensor is exactly what phase 1 fed the rest of the encoder); the re-forward is
cheaper by the prefix's share of the forward; the cost is the kept tensors' memory, from phase
1 to phase 3, within a budget (``reuse_frozen_prefix`` of
:class:`~sgs_tad.engine.sgs.SequentializedGradientSampler`).

An encoder offers a prefix by three methods, as :class:`sgs_tad.encoders.VideoEncoder` has
them: ``frozen_prefix_stages()`` (how many leading stages have no trainable parameter),
``forward_prefix(x, s)`` (input to the output of stage ``s - 1``, one row per snippet) and
``forward_suffix(h, s)`` (the rest, to features), with ``forward_suffix(forward_prefix(x, s),
s)`` equal to ``encoder(x)``. An encoder with hooks on itself (they run in ``encoder(x)``
only), or handed over inside a DDP wrapper (whose forward arms
its gradient hooks) or compiled (whose forward is the compiled one) is run whole;
:class:`~sgs_tad.SGSTrainer` unwraps DDP itself (:mod:`sgs_tad.training.distributed`), so
under the trainer the prefix is kept on every rank.

RNG replay: when the prefix is kept, the random state is captured after it, before the stages
phase 3 re-runs, so dropout in the trainable stages draws the same masks in both phases.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sgs_tad.engine import compiled
from sgs_tad.engine.keep import KeepBudget, keep_fits, parse_keep_budget
from sgs_tad.engine.memory import _isolated, _sync, check_probe_args

__all__ = [
    "PrefixCost",
    "PrefixKeeper",
    "frozen_prefix_stages",
    "kept_prefix_snippets",
    "measure_prefix_cost",
    "parse_prefix_budget",
]

#: ``reuse_frozen_prefix``'s default: the kept prefix outputs of one batch may take this much.
DEFAULT_PREFIX_BUDGET = "256MB"


def parse_prefix_budget(value: bool | int | str) -> KeepBudget:
    """``True``/``"all"``: no limit; ``False``/``0``: off; an int: snippets; a size: bytes."""
    if value is True:
        return KeepBudget(snippets=2**62)
    if value is False:
        return KeepBudget()
    return parse_keep_budget(
        value,
        option="reuse_frozen_prefix",
        accepted="True/'all' (keep every sampled snippet's prefix output), False/0 (off), a "
        "number of snippets or a size such as '256MB'",
    )


def frozen_prefix_stages(encoder: nn.Module) -> int:
    """Leading stages of ``encoder`` phase 3 may skip (0: none, or it cannot run in parts)."""
    method = getattr(type(encoder), "frozen_prefix_stages", None)
    if method is None or not all(
        callable(getattr(encoder, m, None)) for m in ("forward_prefix", "forward_suffix")
    ):
        return 0  # (a DDP wrapper or a plain nn.Module has no such methods)
    if compiled.is_compiled(encoder) or _has_module_hooks(encoder):
        return 0
    return int(encoder.frozen_prefix_stages())  # type: ignore[operator]


def _has_module_hooks(encoder: nn.Module) -> bool:
    """Hooks on the encoder module itself (or on every module) run in ``encoder(x)`` only:
    ``forward_prefix``/``forward_suffix`` would skip them, so such an encoder runs whole."""
    from torch.nn.modules import module as m

    own = (encoder._forward_hooks, encoder._forward_pre_hooks, encoder._backward_hooks,
           encoder._backward_pre_hooks)  # fmt: skip
    every = (m._global_forward_hooks, m._global_forward_pre_hooks, m._global_backward_hooks,
             m._global_backward_pre_hooks)  # fmt: skip
    return any(len(h) for h in (*own, *every))


class PrefixKeeper:
    """The prefix outputs phase 1 keeps for phase 3, one entry per sampled micro-batch."""

    def __init__(self, budget: KeepBudget, stages: int) -> None:
        self.budget = budget
        self.stages = stages
        self.kept: list[torch.Tensor | None] = []
        self.snippets = 0
        self.bytes = 0
        self._per_snippet = 0

    def fits(self, size: int) -> bool:
        """Whether a micro-batch of ``size`` snippets is predicted to fit the budget."""
        return keep_fits(self.budget, size, self.snippets, self.bytes, self._per_snippet)

    def offer(self, h: torch.Tensor) -> bool:
        """Keep ``h`` (a micro-batch's prefix output) unless it is over the budget."""
        size = h.numel() * h.element_size()
        if self.budget.bytes is not None and self.bytes + size > self.budget.bytes:
            self.kept.append(None)
            return False
        self.kept.append(h)
        self.snippets += int(h.shape[0])
        self.bytes += size
        self._per_snippet = max(self._per_snippet, -(-size // max(1, int(h.shape[0]))))
        return True

    def skip(self) -> None:
        """A sampled micro-batch whose prefix is not kept (phase 3 re-runs it whole)."""
        self.kept.append(None)


@dataclass(frozen=True)
class PrefixCost:
    """What the frozen prefix costs per snippet, measured by :func:`measure_prefix_cost`.

    Attributes:
        stages: Leading stages without a trainable parameter (what phase 3 skips).
        bytes_per_snippet: Bytes of the prefix's output, what phase 1 keeps per sampled snippet.
        seconds_per_snippet: A no-grad forward of the prefix, what phase 3 saves per kept
            snippet.
    """

    stages: int
    bytes_per_snippet: float
    seconds_per_snippet: float


def measure_prefix_cost(
    encoder: nn.Module,
    snippet_shape: Sequence[int],
    *,
    micro_batch_size: int = 2,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    repeats: int = 2,
) -> PrefixCost | None:
    """Time and size the frozen prefix of ``encoder`` on random snippets (``None``: none).

    The companion of :func:`sgs_tad.engine.memory.measure_snippet_cost` for the planner
    (:func:`sgs_tad.plan.predict`); it leaves buffers and random states as they were.
    """
    shape = check_probe_args(
        encoder, snippet_shape, micro_batch_size=micro_batch_size, repeats=repeats
    )
    stages = frozen_prefix_stages(encoder)
    if not stages:
        return None
    params = list(encoder.parameters())
    dev = torch.device(device) if device is not None else (
        params[0].device if params else torch.device("cpu")
    )  # fmt: skip
    m = int(micro_batch_size)
    best = math.inf
    with _isolated(encoder, dev), torch.no_grad():
        x = torch.randn((m, *shape), device=dev, dtype=dtype)
        for i in range(int(repeats) + 1):  # the first round is a warm-up
            _sync(dev)
            t0 = time.perf_counter()
            h = encoder.forward_prefix(x, stages)  # type: ignore[operator]
            _sync(dev)
            if i:
                best = min(best, time.perf_counter() - t0)
    return PrefixCost(stages, h.numel() * h.element_size() / m, best / m)


def kept_prefix_snippets(
    sampled: int, micro_batch_size: int, bytes_per_snippet: float, budget: KeepBudget
) -> int:
    """How many of ``sampled`` snippets (one video, in micro-batches of K and a remainder)
    phase 1 keeps the prefix of: :class:`PrefixKeeper`'s decisions, replayed (the planner's
    model of it)."""
    if not budget.enabled or sampled <= 0:
        return 0
    k = max(1, int(micro_batch_size))
    sizes = [k] * (sampled // k) + ([sampled % k] if sampled % k else [])
    keeper = PrefixKeeper(budget, stages=1)
    for size in sizes:
        if keeper.fits(size):
            keeper.offer(
                torch.empty(size, int(bytes_per_snippet), dtype=torch.uint8, device="meta")
            )
        else:
            keeper.skip()
    return keeper.snippets
