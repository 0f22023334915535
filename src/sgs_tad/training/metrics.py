"""Training metrics: JSONL and TensorBoard writers, a progress bar, per-phase timing/memory.

Nothing here writes a file or a terminal line unless the trainer was asked to: the
:class:`MetricsWriter` writes only to the directory it is given, and the
:class:`ProgressBar` draws only when enabled. TensorBoard (``pip install
'sgs_tad[tensorboard]'``) and tqdm (``pip install 'sgs_tad[progress]'``) are optional.

Example:
    >>> timer = PhaseTimer(torch.device("cpu"))
    >>> with timer.phase("encode"):
    ...     _ = torch.ones(8).sum()
    >>> sorted(timer.summary()["encode"])
    ['calls', 'peak_memory_bytes', 'seconds', 'share']
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch

from sgs_tad.training.outputs import atomic_write

__all__ = ["MetricsWriter", "PeakMemory", "PhaseTimer", "ProgressBar", "format_bytes"]

logger = logging.getLogger(__name__)


def format_bytes(n: float | None) -> str:
    """``1536`` -> ``'1.5 KiB'``; ``None`` (not measured) -> ``'-'``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - loop always returns


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsWriter:
    """Append metrics records to ``<directory>/metrics.jsonl`` and optionally TensorBoard.

    Args:
        directory: where ``metrics.jsonl`` (and TensorBoard event files) go; ``None``
            disables writing (records are still logged at DEBUG level).
        tensorboard: also write every numeric value as a TensorBoard scalar.
        enabled: ``False`` on non-zero ranks so only one process writes.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        *,
        tensorboard: bool = False,
        enabled: bool = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.enabled = enabled and self.directory is not None
        self._file: Any | None = None
        self._tb: Any | None = None
        self._purge_step: int | None = None
        if tensorboard and self.directory is None:
            raise ValueError("tensorboard=True needs a log directory; pass log_dir=... as well.")
        self._tensorboard = self.enabled and tensorboard
        if self._tensorboard:
            try:  # fail at construction, not at the first step, when the package is missing
                import torch.utils.tensorboard  # noqa: F401
            except ImportError as exc:
                raise ImportError(
                    "tensorboard=True needs the tensorboard package: "
                    "pip install 'sgs_tad[tensorboard]'"
                ) from exc

    def write(self, record: Mapping[str, Any], *, step: int) -> None:
        """Write one record (a flat mapping of names to numbers or strings) at ``step``."""
        clean = {"step": step, **{k: _jsonable(v) for k, v in record.items()}}
        logger.debug("metrics %s", clean)
        if not self.enabled or self.directory is None:
            return
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Kept open across writes (closed in close()); a with-block per record would
            # reopen the file at every step.
            self._file = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tensorboard and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            # After truncate_after(s), events of steps > s from the interrupted run are
            # dropped from the TensorBoard view as well.
            self._tb = SummaryWriter(
                log_dir=str(self.directory / "tensorboard"), purge_step=self._purge_step
            )
        if self._tb is not None:
            for key, value in clean.items():
                values = value if isinstance(value, list) else [value]
                for i, v in enumerate(values):
                    if key != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        name = f"{key}/{i}" if isinstance(value, list) else key
                        self._tb.add_scalar(name, v, global_step=step)

    @property
    def path(self) -> Path | None:
        """``<directory>/metrics.jsonl``, or ``None`` without a directory."""
        return None if self.directory is None else self.directory / "metrics.jsonl"

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps after ``step`` (call it when a run resumes at ``step``).

        A run interrupted after its last checkpoint has written records for steps that the
        resumed run takes again; without this, ``metrics.jsonl`` lists them twice. The file is
        rewritten atomically (a temporary file in the same folder, then ``os.replace``),
        keeping, in order, every record whose ``"step"`` is ``<= step`` and dropping a torn
        last line (an interrupted write). TensorBoard events after ``step`` are purged when
        the TensorBoard writer opens (``SummaryWriter(purge_step=step + 1)``). A disabled
        writer (no directory, or a non-zero rank) and a missing file are left alone.

        Args:
            step: The optimizer step the run resumes from (the checkpoint's step).

        Returns:
            The number of records (and torn lines) dropped.

        Raises:
            ValueError: when ``step`` is negative.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0 (the resumed step); got {step!r}.")
        if not self.enabled or self.path is None:
            return 0
        self._purge_step = step + 1
        if self._tb is not None:  # reopen with the purge step at the next write
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.path.is_file():
            return 0
        kept: list[bytes] = []
        dropped = undecodable = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line.decode("utf-8"))
                    keep = int(record["step"]) <= step
                except UnicodeDecodeError:
                    keep = False  # damaged bytes: not a record this writer wrote
                    undecodable += 1
                except (ValueError, KeyError, TypeError):
                    keep = False  # a torn line, or not a record of this writer
                if keep:
                    kept.append(line if line.endswith(b"\n") else line + b"\n")
                else:
                    dropped += 1
        if undecodable:
            logger.warning(
                "%s: %d line(s) are not UTF-8 (a damaged file); they are dropped",
                self.path, undecodable,
            )  # fmt: skip
        if dropped:
            atomic_write(self.path, lambda f: f.writelines(kept))
            logger.info(
                "%s: dropped %d record(s) after step %d (the run resumes there)",
                self.path,
                dropped,
                step,
            )
        return dropped

    def close(self) -> None:
        """Close the files (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class PeakMemory:
    """The run's peak memory: allocated and reserved bytes on CUDA, the peak RSS on the CPU.

    On CUDA it reads :func:`torch.cuda.max_memory_allocated` and
    :func:`torch.cuda.max_memory_reserved` (reserved counts the caching allocator's blocks:
    fragmentation from micro-batches of varying size shows there, not in allocated) and keeps
    the highest value of every read, so a :func:`torch.cuda.reset_peak_memory_stats` by
    someone else between two reads (the auto-K probe, a benchmark) loses nothing read before
    it. Nothing here resets the counters. On the CPU the peak resident set size of the process
    (``getrusage``; never reset) is the figure.

    Args:
        device: the training device.

    Example:
        >>> peak = PeakMemory(torch.device("cpu"))
        >>> list(peak.as_mb()), PeakMemory.label("rss_mb")
        (['rss_mb'], 'peak RSS MB')
    """

    LABELS: ClassVar[dict[str, str]] = {
        "allocated_mb": "peak CUDA allocated MB",
        "reserved_mb": "peak CUDA reserved MB",
        "rss_mb": "peak RSS MB",
    }

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._peak: dict[str, int] = {}

    @property
    def cuda(self) -> bool:
        """Whether the CUDA counters are read (a CUDA device on a machine with CUDA)."""
        return self.device.type == "cuda" and torch.cuda.is_available()

    def update(self) -> PeakMemory:
        """Read the counters now (cheap: no device sync) and keep the maxima."""
        if self.cuda:
            now = {"allocated": int(torch.cuda.max_memory_allocated(self.device)),
                   "reserved": int(torch.cuda.max_memory_reserved(self.device))}  # fmt: skip
        else:
            now = {"rss": _peak_rss()}
        for key, value in now.items():
            self._peak[key] = max(self._peak.get(key, 0), value)
        return self

    def read(self) -> dict[str, int]:
        """``{"allocated", "reserved"}`` (CUDA) or ``{"rss"}`` (CPU), in bytes, after a read."""
        return dict(self.update()._peak)

    def as_mb(self) -> dict[str, float]:
        """:meth:`read` in MiB, keys suffixed ``_mb`` (as a metrics file stores them)."""
        return {f"{key}_mb": value / 2**20 for key, value in self.read().items()}

    @classmethod
    def label(cls, key: str) -> str:
        """A table heading for a key of :meth:`as_mb` (``"rss_mb"`` -> ``"peak RSS MB"``)."""
        if key not in cls.LABELS:
            raise ValueError(f"unknown peak memory key {key!r}; known: {sorted(cls.LABELS)}.")
        return cls.LABELS[key]


def _peak_rss() -> int:
    """The process's peak resident set size in bytes (``ru_maxrss``: KiB on Linux)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class PhaseTimer:
    """Wall time per named phase (``encode``, ``detector``, ``update``, ...) and peak memory.

    On CUDA the device is synchronised at the phase boundaries when ``synchronize`` (so the
    time is the phase's, not the time to enqueue its kernels) and :attr:`memory`, a
    :class:`PeakMemory`, is read at each phase's end. The CUDA peak counters are never reset (a
    reset per phase made the run's peak unreadable: what a script read after training was the
    last phase's). A phase's ``peak_memory_bytes`` is therefore the run's allocated peak where
    *that phase* raised it (``None`` for a phase that never did): it tells which phase sets the
    peak. On the CPU peak memory is not measured per phase (:attr:`memory` reads the peak RSS).

    Args:
        device: the training device.
        synchronize: on CUDA, synchronise the device at each phase boundary, so that a phase's
            time is its kernels' and not the time to enqueue them (benchmarks). Off by
            default: it costs two host syncs per phase, eight per step, and each one stalls
            the host until the device is idle.
    """

    def __init__(self, device: torch.device, *, synchronize: bool = False) -> None:
        self.device = torch.device(device)
        self.synchronize = synchronize
        self.memory = PeakMemory(self.device)
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}
        self._peak: dict[str, int | None] = {}

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_available()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block as phase ``name``."""
        before = 0
        if self._cuda:
            if self.synchronize:
                torch.cuda.synchronize(self.device)
            before = int(torch.cuda.max_memory_allocated(self.device))
        start = time.perf_counter()
        try:
            yield
        finally:
            raised: int | None = None
            if self._cuda:
                if self.synchronize:
                    torch.cuda.synchronize(self.device)
                after = int(torch.cuda.max_memory_allocated(self.device))
                self.memory.update()
                raised = after if after > before else None
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start
            self._calls[name] = self._calls.get(name, 0) + 1
            previous = self._peak.get(name)
            self._peak[name] = raised if previous is None else max(previous, raised or 0)

    def peak_memory(self) -> int | None:
        """The run's peak allocated CUDA memory so far (``None`` on the CPU)."""
        return self.memory.read()["allocated"] if self._cuda else None

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{phase: {"seconds", "share", "calls", "peak_memory_bytes"}}``."""
        total = sum(self._seconds.values()) or 1.0
        return {
            name: {
                "seconds": seconds,
                "share": seconds / total,
                "calls": self._calls[name],
                "peak_memory_bytes": self._peak.get(name),
            }
            for name, seconds in self._seconds.items()
        }

    def format_summary(self) -> str:
        """The summary as a small text table."""
        lines = [f"{'phase':<12}{'seconds':>10}{'share':>8}{'calls':>8}{'peak memory':>14}"]
        for name, row in self.summary().items():
            lines.append(
                f"{name:<12}{row['seconds']:>10.2f}{row['share']:>8.1%}{row['calls']:>8d}"
                f"{format_bytes(row['peak_memory_bytes']):>14}"
            )
        return "\n".join(lines)


class ProgressBar:
    """A tqdm bar when tqdm is installed and ``enabled``; otherwise nothing is drawn.

    Args:
        total: number of updates expected (``None`` if unknown).
        desc: label shown before the bar.
        enabled: draw at all (the trainer enables it on rank 0 when ``progress=True``).
    """

    def __init__(self, total: int | None, *, desc: str = "", enabled: bool = True) -> None:
        self._bar: Any | None = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            logger.warning(
                "progress=True but tqdm is not installed (pip install 'sgs_tad[progress]');"
                " training continues without a progress bar."
            )
            return
        self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` and show ``postfix`` values next to the bar."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        """Remove the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
