"""How many intra-op threads torch may use next to the decoding threads.

torch starts one OpenMP thread per core. The engine's prefetch thread (and a DataLoader's
workers) decode on those same cores, so the two oversubscribe them; and an OpenMP parallel
region ends in a barrier where every thread waits for the slowest: when another process takes
a core, each barrier waits for a descheduled thread, and a step can take ten times as long
(``docs/benchmarks.md``, issue 21). Leaving the decode threads their cores avoids both.

Example:
    >>> choose_threads(decode_threads=1, cores=2, environ={})
    1
    >>> choose_threads(decode_threads=1, cores=16, environ={})
    15
    >>> choose_threads(decode_threads=1, cores=2, environ={"OMP_NUM_THREADS": "2"})
    2
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

__all__ = ["available_cores", "choose_threads", "set_threads"]

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def choose_threads(
    *,
    decode_threads: int = 1,
    cores: int | None = None,
    requested: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Intra-op threads for torch: the cores left after the decoding threads, at least 1.

    Args:
        decode_threads: threads that decode or prefetch beside the training thread (the
            engine's prefetch thread is 1; add DataLoader workers that run on these cores).
        cores: cores available (default: :func:`available_cores`).
        requested: an explicit choice, returned as is (e.g. a ``--threads`` option).
        environ: where to look for a user's ``OMP_NUM_THREADS`` (default ``os.environ``),
            which is respected as an explicit choice.

    Returns:
        The thread count to pass to :func:`torch.set_num_threads`.
    """
    if decode_threads < 0:
        raise ValueError(f"decode_threads must be >= 0, got {decode_threads}.")
    if requested is not None:
        if requested < 1:
            raise ValueError(
                f"requested threads must be >= 1 (or None for auto), got {requested}."
            )
        return requested
    env = os.environ if environ is None else environ
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value.split(",")[0]))
        except ValueError:
            logger.warning("OMP_NUM_THREADS=%r is not a number; choosing the threads", value)
    if cores is None:
        cores = available_cores()
    return max(1, cores - decode_threads)


def set_threads(*, decode_threads: int = 1, requested: int | None = None) -> int:
    """:func:`choose_threads`, applied with :func:`torch.set_num_threads`; returns the count."""
    threads = choose_threads(decode_threads=decode_threads, requested=requested)
    torch.set_num_threads(threads)
    logger.info("torch intra-op threads: %d (%d core(s) available)", threads, available_cores())
    return threads
