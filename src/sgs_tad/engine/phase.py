"""Which SGS phase is running, observable from inside an encoder.

An encoder may want to skip side effects (logging, statistics, caches) while the engine
re-runs it in phase 3, because that forward pass repeats one already made in phase 1.
The flags are thread-local so that data-loading threads never see them.

Example:
    >>> import sgs_tad
    >>> sgs_tad.is_encoding(), sgs_tad.is_recomputing()
    (False, False)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["encoding", "is_encoding", "is_recomputing", "recomputing"]

_local = threading.local()


def is_encoding() -> bool:
    """``True`` while the engine runs the encoder without grad in phase 1 (``encode``)."""
    return bool(getattr(_local, "encoding", False))


def is_recomputing() -> bool:
    """``True`` while the engine re-runs sampled micro-batches with grad in phase 3."""
    return bool(getattr(_local, "recomputing", False))


@contextmanager
def encoding() -> Iterator[None]:
    """Mark the enclosed code as phase 1 (used by the engine; re-entrant)."""
    previous = is_encoding()
    _local.encoding = True
    try:
        yield
    finally:
        _local.encoding = previous


@contextmanager
def recomputing() -> Iterator[None]:
    """Mark the enclosed code as phase 3 (used by the engine; re-entrant)."""
    previous = is_recomputing()
    _local.recomputing = True
    try:
        yield
    finally:
        _local.recomputing = previous
