"""Videos that fail to decode during a run: counted, and the run stopped after too many.

A corrupt file among thousands is skipped by the trainer (``on_bad_video="skip"``), but a data
root that disappears mid-run (an unmounted disk, a moved folder) makes every batch fail: without
a bound the run would "train" for hours on nothing. :class:`BadVideoLimit` counts the distinct
videos whose snippets could not be read and raises :class:`TooManyBadVideosError` (not a
:class:`~sgs_tad.engine.sources.SnippetReadError`, so no skip policy swallows it) once there are
more than its limit, naming the files.

The count lives in the process that decodes (the main process and its prefetch thread for lazy
sources). Sources pickled to and from DataLoader workers find the same counter again by a token.

Example:
    >>> from sgs_tad.engine.sources import SnippetReadError
    >>> limit = BadVideoLimit(1, total=10)
    >>> limit.report(SnippetReadError("x", video_id="a", path="a.mp4", reason="missing file"))
    >>> try:
    ...     limit.report(SnippetReadError("x", video_id="b", path="b.mp4"))
    ... except TooManyBadVideosError as err:
    ...     print(err.failures)
    {'a.mp4': ('a', 'missing file'), 'b.mp4': ('b', 'unreadable')}
"""

from __future__ import annotations

import threading
import uuid
import weakref
from typing import Any

from sgs_tad.engine.sources import SnippetReadError

__all__ = ["BadVideoLimit", "TooManyBadVideosError"]

_registry: weakref.WeakValueDictionary[str, BadVideoLimit] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


class TooManyBadVideosError(RuntimeError):
    """More distinct videos failed to decode than the data set's ``max_bad_videos`` allows.

    Attributes:
        failures: ``{path: (video_id, reason)}`` of every video that failed so far.
    """

    def __init__(self, message: str, failures: dict[str, tuple[str | None, str]]) -> None:
        super().__init__(message)
        self.failures = failures


def _limit_for(token: str, limit: int, total: int) -> BadVideoLimit:
    with _registry_lock:
        found = _registry.get(token)
        if found is None:
            found = BadVideoLimit(limit, total=total, _token=token)
        return found


class BadVideoLimit:
    """Counts the distinct videos that failed to decode; raises after more than ``limit``.

    Args:
        limit: How many distinct videos may fail (each failure skips a batch); more raises.
        total: Videos in the data set, for the message.
    """

    def __init__(self, limit: int, *, total: int, _token: str | None = None) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0; got {limit!r}.")
        self.limit = limit
        self.total = int(total)
        self.failures: dict[str, tuple[str | None, str]] = {}
        self._lock = threading.Lock()
        self._token = _token or uuid.uuid4().hex
        with _registry_lock:
            _registry[self._token] = self

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        # One counter per process and data set: a source unpickled from a worker reports to
        # the counter of the data set it came from, not to a fresh copy of it.
        return _limit_for, (self._token, self.limit, self.total)

    def report(self, error: SnippetReadError) -> None:
        """Count the video of ``error``.

        Raises:
            TooManyBadVideosError: when more than ``limit`` distinct videos have failed.
        """
        key = str(error.path if error.path is not None else error.video_id)
        with self._lock:
            self.failures[key] = (error.video_id, error.reason)
            if len(self.failures) <= self.limit:
                return
            failures = dict(self.failures)
        missing = [p for p, (_, r) in failures.items() if r == "missing file"]
        other = [p for p in failures if p not in missing]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:5])})")
        if other:
            parts.append(f"{len(other)} unreadable ({', '.join(other[:5])})")
        raise TooManyBadVideosError(
            f"{len(failures)} of {self.total} videos could not be read during this run, more "
            f"than max_bad_videos={self.limit}: {'; '.join(parts)}. Files that go missing "
            "mid-run mean the data root moved or its disk went away: check it and resume; "
            "corrupt files: re-encode them or remove them from the annotation file; or raise "
            "ActivityNetDataset(max_bad_videos=...) (None: no limit).",
            failures,
        ) from error
