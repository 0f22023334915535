"""Kept graphs: phase-1 graphs of sampled micro-batches kept for phase 3, within a budget.

With ``keep_graphs`` the leading sampled micro-batches of phase 1 run with grad and their
graphs are kept, so phase 3 back-propagates them without a re-forward; the budget is a number
of snippets or of saved-activation bytes (measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from sgs_tad.engine.memory import parse_bytes

__all__ = ["KeepBudget", "keep_fits", "parse_keep_budget"]


@dataclass(frozen=True)
class KeepBudget:
    """How much of phase 1's sampled graphs to keep: a number of snippets, or of bytes."""

    snippets: int | None = None
    bytes: int | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.snippets) or bool(self.bytes)


def parse_keep_budget(
    value: int | str, *, option: str = "keep_graphs", accepted: str | None = None
) -> KeepBudget:
    """``"all"``: no limit; an int: snippets (``0``: none); a size such as ``"512MB"``: bytes.

    ``option`` and ``accepted`` name the option and its values in the errors.
    """
    if value == "all":
        return KeepBudget(snippets=2**62)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{option} must be >= 0 snippets; got {value}.")
        return KeepBudget(snippets=value)
    if isinstance(value, str):
        try:
            return KeepBudget(bytes=parse_bytes(value))
        except ValueError as err:
            raise ValueError(f"{option}: {err}") from None
    accepted = accepted or "0 (keep none), a number of snippets, 'all' or a size such as '512MB'"
    raise ValueError(f"{option} must be {accepted}; got {value!r}.")


def keep_fits(
    budget: KeepBudget, size: int, kept_snippets: int, kept_bytes: int, last: int
) -> bool:
    """Whether the next sampled micro-batch (``size`` snippets) still fits the keep budget.

    ``last`` is the bytes per snippet of the last kept micro-batch (0 before the first).
    """
    if budget.snippets is not None:
        return kept_snippets + size <= budget.snippets
    assert budget.bytes is not None
    # Predicted from the last kept micro-batch; the first one is measured (and dropped
    # again if it alone exceeds the budget).
    predicted = last * size if last else 0
    return kept_bytes + predicted <= budget.bytes
