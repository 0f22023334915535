"""SIGTERM/SIGINT during training: finish the step, save a checkpoint, stop.

A cluster scheduler's SIGTERM (or a Ctrl-C) sets a flag that the trainer reads after each
optimizer step; a second Ctrl-C raises ``KeyboardInterrupt`` at once. Handlers are installed
only in the main thread and the previous ones are put back on exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["StopOnSignal"]

logger = logging.getLogger(__name__)


class StopOnSignal:
    """Context manager: call ``request_stop()`` on SIGTERM/SIGINT while inside it.

    Args:
        request_stop: Called on the first signal.
        already_requested: Tells whether a stop was requested (a second SIGINT then aborts).
    """

    def __init__(
        self, request_stop: Callable[[], None], already_requested: Callable[[], bool]
    ) -> None:
        self.request_stop = request_stop
        self.already_requested = already_requested
        self._previous: dict[int, Any] = {}
        #: The first signal received (``signal.SIGTERM``, ...), ``None`` while none came: a
        #: job's exit status says it was stopped (128 + the signal number, as the shell's).
        self.received: signal.Signals | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.already_requested() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        logger.warning(
            "received %s: finishing the current step, saving a checkpoint and stopping"
            " (Ctrl-C again to abort now)",
            signal.Signals(signum).name,
        )
        if self.received is None:
            self.received = signal.Signals(signum)
        self.request_stop()

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()
