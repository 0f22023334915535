"""Output folders: atomic final files, leftover temporaries, one run per folder.

* :func:`atomic_write` (and :func:`atomic_write_text`, :func:`atomic_write_json`,
  :func:`atomic_torch_save`): a final file is written to a temporary file created with
  :func:`tempfile.mkstemp` in the same folder (an unpredictable name opened with ``O_EXCL``,
  so a symbolic link planted in the folder is never followed), flushed to disk, then renamed
  over its name with :func:`os.replace`. A reader sees the old file or the new one, never a
  half-written one; a full disk raises :class:`DiskFullError` and leaves the old file as it was.
* :func:`remove_stale_temporaries`: the ``.<name>.*.tmp`` files a killed writer left behind.
* :class:`OutputLock`: an exclusive lock on a folder, so that two runs never write into the
  same one; a lock left by a process that died is taken over.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d, OutputLock(d):
    ...     _ = atomic_write_json(Path(d) / "metrics.json", {"average_mAP": 0.5})
    ...     (Path(d) / "metrics.json").read_text()
    '{\\n  "average_mAP": 0.5\\n}'
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

try:  # POSIX: a lock the kernel releases when its process dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_EXCL and a pid check instead
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DiskFullError",
    "OutputLock",
    "OutputLockedError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "remove_stale_temporaries",
    "temporary_file",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".sgs_tad.lock"
_TEMPORARY = re.compile(r"^\..+\.tmp$")


class DiskFullError(OSError):
    """A file could not be written because its disk (or quota) is full; nothing was replaced."""


class OutputLockedError(RuntimeError):
    """Another live process holds the lock of an output folder."""


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk too. Some file
    # systems (and Windows) refuse to open a directory; then there is nothing more to do.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    return DiskFullError(
        exc.errno,
        f"the disk holding {str(path.parent)!r} is full ({os.strerror(exc.errno or 0)}):"
        f" {path.name} was not written and any previous {path.name} is unchanged. Free some"
        " space (or write to another --output-dir) and run again.",
    )


def temporary_file(path: str | os.PathLike[str]) -> tuple[int, Path]:
    """A new temporary file next to ``path``: ``(fd, name)``, named ``.<name>.<random>.tmp``.

    :func:`tempfile.mkstemp` opens it with ``O_CREAT | O_EXCL`` under a random name, so a
    file or symbolic link planted in the folder is never opened or followed.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(name)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], Any],
    *,
    publish: Callable[[Path], None] | None = None,
) -> Path:
    """Write a file atomically: ``write(f)`` into a temporary file, fsync, ``os.replace``.

    Args:
        path: The final file name (its folder is created if needed).
        write: Writes the content into the binary file object it is given.
        publish: Called with the finished temporary file just before the rename (a
            checkpoint's digest sidecar is written there, so that it is on disk first).

    Returns:
        ``path``.

    Raises:
        DiskFullError: the disk or quota is full (``ENOSPC``/``EDQUOT``); the temporary file
            is removed and a previous file at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(path)
    f = _WriteErrors(os.fdopen(fd, "wb"))
    try:
        with f.raw:
            write(f)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        if publish is not None:
            publish(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError of its own: the OSError it
        # hides was recorded by the wrapper, so that a full disk is called a full disk.
        cause = exc if isinstance(exc, OSError) else f.error
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, cause) from exc
        raise
    _fsync_dir(path.parent)
    return path


class _WriteErrors:
    """A binary file that remembers the first ``OSError`` its ``write`` raised."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise

    def fileno(self) -> int:
        return self.raw.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of ``json.dumps(obj)`` (serialised first: a value JSON cannot
    hold raises before anything is written)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """:func:`atomic_write` of :func:`torch.save` ``(obj)``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(directory: str | os.PathLike[str], *, prefix: str = "") -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that a killed writer left.

    Call it only while holding the folder's :class:`OutputLock` (or when no other process
    writes there): a temporary file of a live writer would be deleted too.

    Args:
        directory: The folder to clean (a missing folder is fine).
        prefix: Only names that start with ``"." + prefix`` (``"checkpoint-"``, say).

    Returns:
        The files removed (each is logged as a warning).
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if _TEMPORARY.match(p.name) and p.name.startswith("." + prefix) and not p.is_dir():
            p.unlink(missing_ok=True)
            removed.append(p)
            logger.warning("removed %s, a temporary file left by an interrupted write", p)
    return removed


# ------------------------------------------------------------------------------------ locks

# Folders whose lock this process holds, with a count: a run that locks its output folder and
# then builds a trainer writing into it (the main job) takes the same lock twice.
_HELD: dict[Path, tuple[int, int]] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OSError:
        return False
    return True


def _owner(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    return f"process {text}" if text else "another process"


class OutputLock:
    """An exclusive lock on an output folder: ``<directory>/.sgs_tad.lock``, holding the pid.

    On POSIX the file is locked with ``fcntl.flock``, which the kernel releases when the
    holder dies (a SIGKILL, a node failure), so a lock left behind is stale by definition and
    taken over. Elsewhere the file is created with ``O_EXCL`` and a lock whose pid is no
    longer alive is taken over. The same process may lock a folder more than once (counted).

    Args:
        directory: The folder (created if needed).
        what: How the refusal names the folder (``"--output-dir"``, ``"checkpoint_dir"``).

    Raises:
        OutputLockedError: on ``acquire()`` / ``with``, when another live process holds it.
    """

    def __init__(self, directory: str | os.PathLike[str], *, what: str = "output folder") -> None:
        self.directory = Path(directory)
        self.what = what
        self._key: Path | None = None
        self._created = False

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / LOCK_NAME

    def _refuse(self) -> OutputLockedError:
        return OutputLockedError(
            f"{self.what} {str(self.directory)!r} is in use by {_owner(self.path)} (lock file"
            f" {LOCK_NAME}): two runs in one folder would overwrite each other's checkpoints,"
            " metrics and model. Wait for that run to finish, or pass another folder."
        )

    def acquire(self) -> OutputLock:
        """Take the lock (see the class); returns ``self``."""
        if self._key is not None:
            return self
        self._created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        key = self.directory.resolve()
        if key in _HELD:
            fd, count = _HELD[key]
            _HELD[key] = (fd, count + 1)
            self._key = key
            return self
        fd = self._lock_flock() if fcntl is not None else self._lock_exclusive()
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        _HELD[key] = (fd, 1)
        self._key = key
        return self

    def _lock_flock(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse() from None
            # The holder before us may have deleted the file on release after we opened it:
            # then our lock is on a file nobody else sees; open the current one again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _lock_exclusive(self) -> int:  # pragma: no cover - used where fcntl is missing
        for _ in range(2):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                text = self.path.read_text(errors="replace").split()
                pid = int(text[0]) if text and text[0].isdigit() else None
                if pid is not None and pid != os.getpid() and _pid_alive(pid):
                    raise self._refuse() from None
                logger.warning("taking over the stale lock %s (%s)", self.path, " ".join(text))
                self.path.unlink(missing_ok=True)
        raise self._refuse()

    def release(self) -> None:
        """Give the lock back. The last release of this process deletes the lock file, and
        the folder too when the lock created it and it is still empty."""
        key, self._key = self._key, None
        if key is None or key not in _HELD:
            return
        fd, count = _HELD[key]
        if count > 1:
            _HELD[key] = (fd, count - 1)
            return
        del _HELD[key]
        # Deleted while still locked: a process waiting on the old file sees it is gone
        # (the samestat check above) and opens the new one.
        self.path.unlink(missing_ok=True)
        os.close(fd)
        if self._created:  # a run refused before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                self.directory.rmdir()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
