"""Atomic, verified training checkpoints (their random states live in :mod:`sgs_tad.engine.rng`).

A checkpoint is written to a temporary file in the same directory, flushed to disk
(``fsync``) and renamed over its final name, so a crash or a SIGKILL mid-write never leaves a
half-written file under a checkpoint's name. A SHA-256 sidecar (``<name>.sha256``) is written
first; loading checks it, so a file truncated or damaged later (a full disk, a copy that
stopped) is refused with a message and :meth:`CheckpointManager.load_latest` falls back to the
previous checkpoint. Loading always uses ``torch.load(weights_only=True)``: a checkpoint can
hold tensors, numbers, strings and containers of them, never arbitrary pickled objects.

Example:
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     manager = CheckpointManager(d, keep_last=2)
    ...     for step in (1, 2, 3):
    ...         _ = manager.save({"step": step, "w": torch.zeros(2)}, step=step)
    ...     state, path = manager.load_latest()
    ...     [p.name for p in manager.checkpoints()], state["step"]
    (['checkpoint-000000002.pt', 'checkpoint-000000003.pt'], 3)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgs_tad.training.outputs import atomic_write, remove_stale_temporaries

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "atomic_save",
    "check_resumable",
    "check_settings",
    "describe_shape_mismatch",
    "load_checkpoint",
    "model_fingerprint",
    "parameter_shapes",
    "plain_settings",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not an sgs_tad checkpoint."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save` atomically, with a SHA-256 sidecar.

    Args:
        obj: what to save; it must be loadable with ``weights_only=True`` (tensors, numbers,
            strings, ``None`` and dicts/lists/tuples of them).
        path: the final file name.

    Returns:
        The path written.

    Raises:
        DiskFullError: the disk is full; an older file at ``path`` is left as it was.
    """
    path = Path(path)

    def publish(tmp: Path) -> None:
        # The digest is that of the bytes on disk; the sidecar is published before the
        # checkpoint, so a checkpoint visible under its final name always has its digest.
        digest = _sha256(tmp)
        sidecar = path.with_name(path.name + ".sha256")
        atomic_write(sidecar, lambda f: f.write(f"{digest}  {path.name}\n".encode()))

    return atomic_write(path, lambda f: torch.save(obj, f), publish=publish)


def _recorded_digest(sidecar: Path, path: Path) -> str:
    try:
        text = sidecar.read_bytes().decode("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"the digest file {sidecar.name} of checkpoint {str(path)!r} is unreadable or"
            f" damaged ({type(exc).__name__}); the checkpoint cannot be verified. Delete both"
            " to resume from the previous checkpoint."
        ) from exc
    return text.split()[0] if text.strip() else ""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`, checking its digest.

    Args:
        path: the checkpoint file.

    Returns:
        The saved dict, with every tensor on the CPU.

    Raises:
        CheckpointError: the file is missing, its digest does not match (truncated or
            damaged), or ``torch.load(weights_only=True)`` refuses it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        expected = _recorded_digest(sidecar, path)
        actual = _sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is truncated or corrupt: its SHA-256 is {actual[:12]}…"
                f" but {sidecar.name} records {expected[:12] or '(empty)'}…. Delete it to resume"
                " from the previous checkpoint, or restore it from a backup."
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be loaded with torch.load(weights_only=True)"
            f" ({type(exc).__name__}: {exc}). It is truncated, corrupt, or holds objects that"
            " are not plain tensors and containers; delete it to use the previous one."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict."
        )
    return obj


class CheckpointManager:
    """Numbered checkpoints ``checkpoint-<step>.pt`` in one directory, keeping the last k.

    Args:
        directory: where checkpoints are written (created on first save).
        keep_last: how many checkpoints to keep; older ones are deleted after each save.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_last: int = 3) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(
                f"keep_last must be a positive int; got {keep_last!r}. Use 1 to keep only the"
                " newest checkpoint."
            )
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        """The file name used for the checkpoint at optimizer step ``step``."""
        return self.directory / f"checkpoint-{step:09d}.pt"

    def checkpoints(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := _NAME.match(p.name)) is not None
        ]
        return [p for _, p in sorted(found)]

    def remove_leftovers(self) -> list[Path]:
        """Delete what a writer killed mid-save left: temporary files and sidecars whose
        checkpoint is gone. Call it only when no other process writes checkpoints here (the
        trainer does, at the start of ``fit``, while holding the folder's lock).

        Returns:
            The files removed (each is logged).
        """
        removed = remove_stale_temporaries(self.directory, prefix="checkpoint-")
        if self.directory.is_dir():
            for sidecar in self.directory.glob("checkpoint-*.pt.sha256"):
                if not sidecar.with_name(sidecar.name[: -len(".sha256")]).exists():
                    sidecar.unlink(missing_ok=True)
                    removed.append(sidecar)
                    logger.warning("removed %s, whose checkpoint was never written", sidecar)
        return removed

    def save(self, state: Mapping[str, Any], *, step: int) -> Path:
        """Write ``state`` atomically as the checkpoint of ``step`` and prune old ones."""
        path = atomic_save(dict(state), self.path_for(step))
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        logger.info("saved checkpoint %s", path)
        return path

    def load_latest(self) -> tuple[dict[str, Any], Path] | None:
        """Load the newest checkpoint that is intact.

        A truncated or corrupt checkpoint is refused with a warning naming it, and the one
        before it is tried.

        Returns:
            ``(state, path)``, or ``None`` when the directory holds no checkpoint.

        Raises:
            CheckpointError: checkpoints exist but none of them can be loaded.
        """
        candidates = self.checkpoints()
        errors = []
        for path in reversed(candidates):
            try:
                return load_checkpoint(path), path
            except CheckpointError as exc:
                logger.warning("%s Trying the previous checkpoint.", exc)
                errors.append(str(exc))
        if errors:
            raise CheckpointError(
                f"none of the {len(errors)} checkpoints in {str(self.directory)!r} can be"
                " loaded:\n  " + "\n  ".join(errors)
            )
        return None


# ----------------------------------------------------------------------------- fingerprints


def parameter_shapes(modules: Mapping[str, torch.nn.Module]) -> dict[str, list[int]]:
    """``{"<module>.<name>": shape}`` for every entry of each module's ``state_dict``."""
    shapes: dict[str, list[int]] = {}
    for prefix, module in modules.items():
        for name, value in module.state_dict().items():
            if isinstance(value, torch.Tensor):
                shapes[f"{prefix}.{name}"] = list(value.shape)
    return shapes


def model_fingerprint(modules: Mapping[str, torch.nn.Module]) -> str:
    """A short digest of the state-dict names, shapes and dtypes of ``modules``.

    Two models with the same architecture have the same fingerprint whatever their weights;
    a resume directory written for another model is refused by comparing fingerprints.
    """
    digest = hashlib.sha256()
    for prefix, module in modules.items():
        for name, value in module.state_dict().items():
            if isinstance(value, torch.Tensor):
                digest.update(f"{prefix}.{name}:{tuple(value.shape)}:{value.dtype}\n".encode())
    return digest.hexdigest()[:16]


def describe_shape_mismatch(
    saved: Mapping[str, Iterable[int]], current: Mapping[str, Iterable[int]], *, limit: int = 5
) -> str:
    """A few lines saying which entries differ between two :func:`parameter_shapes` maps."""
    saved_l = {k: list(v) for k, v in saved.items()}
    current_l = {k: list(v) for k, v in current.items()}
    lines = []
    missing = [k for k in saved_l if k not in current_l]
    extra = [k for k in current_l if k not in saved_l]
    changed = [k for k in saved_l if k in current_l and saved_l[k] != current_l[k]]
    if missing:
        lines.append(f"in the checkpoint only: {', '.join(missing[:limit])}")
    if extra:
        lines.append(f"in the current model only: {', '.join(extra[:limit])}")
    for k in changed[:limit]:
        lines.append(f"{k}: checkpoint {saved_l[k]} vs model {current_l[k]}")
    return "; ".join(lines) or "same names and shapes, different dtypes"


def check_resumable(
    state: Mapping[str, Any],
    *,
    modules: Mapping[str, torch.nn.Module],
    world_size: int,
    source: str,
    strict_world_size: bool = True,
) -> bool:
    """Check that a trainer checkpoint fits these modules and this world size.

    Returns:
        Whether the world size is the one the checkpoint was written with.

    Raises:
        ValueError: not a trainer checkpoint; written for a different model (the message
            names the first differing entries); or written with another world size while
            ``strict_world_size``.
    """
    if state.get("format") != "sgs_tad.training.trainer":
        raise ValueError(
            f"{source} is not an SGSTrainer checkpoint (format={state.get('format')!r})."
        )
    current = model_fingerprint(modules)
    if state["fingerprint"] != current:
        diff = describe_shape_mismatch(state["shapes"], parameter_shapes(modules))
        raise ValueError(
            f"{source} was written for a different model (fingerprint {state['fingerprint']}"
            f" vs {current}): {diff}. Resume with the model it was trained with, or use a"
            " fresh checkpoint_dir for this model."
        )
    same_world = int(state["world_size"]) == world_size
    if not same_world and strict_world_size:
        raise ValueError(
            f"{source} was written with world size {state['world_size']}, this run has"
            f" {world_size}. The data sharding and per-rank random states would not match,"
            " so the run cannot continue bit-identically. Relaunch with"
            f" --nproc_per_node={state['world_size']}, or call"
            " trainer.load_state_dict(load_checkpoint(path), strict_world_size=False) to keep"
            " weights/optimizer/step and restart the interrupted epoch."
        )
    return same_world


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value) if isinstance(os.fspath(value), str) else str(value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()  # numpy scalar -> int/float/bool, array -> nested lists
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"settings{where} is a {type(value).__module__}.{type(value).__qualname__} ({value!r});"
        " a checkpoint stores settings as JSON-like values that torch.load(weights_only=True)"
        " reads back: None, bool, int, float, str, lists and dicts of them (paths and numpy"
        " values are converted). Pass str(value) or a number instead."
    )


def plain_settings(settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``settings`` as JSON-like values a checkpoint can always read back.

    Paths become strings, numpy scalars and arrays (and tensors) numbers and lists, tuples
    lists; anything else is refused now rather than when a resume reads it back.

    Raises:
        TypeError: a value of another type; the message names its key.
    """
    if settings is None:
        return None
    if not isinstance(settings, Mapping):
        raise TypeError(
            f"settings must be a mapping of names to values (a dict); got"
            f" {type(settings).__name__}. Example: settings={{'lr': 1e-3, 'seed': 0}}."
        )
    return {str(k): _plain(v, f"[{k!r}]") for k, v in settings.items()}


def check_settings(
    saved: Mapping[str, Any] | None,
    current: Mapping[str, Any] | None,
    *,
    source: str,
    override: bool = False,
) -> list[str]:
    """Compare the run settings stored in a checkpoint with this run's.

    Returns:
        One ``"name: checkpoint X, now Y"`` line per setting that differs (logged as a
        warning when ``override``).

    Raises:
        ValueError: settings differ and ``override`` is false; the message names each.
    """
    if not saved or current is None:
        return []
    with contextlib.suppress(TypeError):  # older checkpoints stored tuples, this run lists
        saved, current = plain_settings(saved) or {}, plain_settings(current) or {}
    names = sorted(set(saved) | set(current))
    missing = object()
    diffs = [
        f"{name}: checkpoint {saved.get(name, '<unset>')!r}, now {current.get(name, '<unset>')!r}"
        for name in names
        if saved.get(name, missing) != current.get(name, missing)
    ]
    if diffs and not override:
        raise ValueError(
            f"{source} was written by a run with other settings: "
            + "; ".join(diffs)
            + ". Resume with the same settings, use a fresh output/checkpoint directory, or"
            " accept the change explicitly (resume_override=True; the main job's"
            " --resume-override)."
        )
    for line in diffs:
        logger.warning("resuming with a changed setting (%s)", line)
    return diffs
