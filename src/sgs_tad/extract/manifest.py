"""What a feature extraction made: the manifest of an output folder of :mod:`sgs_tad.extract`.

``<output>/extract_manifest.json`` records the settings the files were made with (the
encoder's weights digest, the snippet options, the file prefix) and, per file, its shape and
size. A rerun over the folder uses it to tell the files that are done from those that are
not: a file is done when its ``.npy`` header and size are whole and, when the manifest lists
it, match what was written. A rerun with other settings is refused (or, with
``overwrite``, starts the folder over) instead of "skipping" files made another way.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> np.save(d / "a.npy", np.zeros((4, 2), np.float32))
    >>> npy_shape(d / "a.npy"), npy_shape(d / "missing.npy")
    ((4, 2), None)
    >>> _ = (d / "b.npy").write_bytes(b"")  # a 0-byte file is not a finished one
    >>> npy_shape(d / "b.npy") is None
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgs_tad.training.outputs import atomic_write_json

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "encoder_digest",
    "extraction_settings",
    "npy_shape",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "extract_manifest.json"
FORMAT, VERSION = "sgs_tad.extract", 1


def npy_shape(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The shape of a whole ``.npy`` file, or ``None`` when it is missing, empty, truncated
    or not an ``.npy`` file (its size must be the header's plus the array's bytes)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            header = f.tell()
    except (OSError, ValueError, SyntaxError):
        return None
    if size != header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        return None
    return tuple(int(n) for n in shape)


def encoder_digest(encoder: nn.Module) -> str:
    """A short SHA-256 of the encoder's state (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, value in encoder.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}\n".encode())
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()[:16]


def extraction_settings(
    encoder: nn.Module,
    snippets: Any,
    *,
    prefix: str,
    pool: Callable[[torch.Tensor], torch.Tensor] | None,
) -> dict[str, Any]:
    """The settings a folder of features depends on (JSON values)."""
    options = asdict(snippets) if is_dataclass(snippets) and not isinstance(snippets, type) else {}
    return {
        "encoder": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "encoder_digest": encoder_digest(encoder),
        "pool": None if pool is None else getattr(pool, "__qualname__", type(pool).__name__),
        "prefix": prefix,
        **json.loads(json.dumps(options)),  # the snippet options; tuples -> lists, as read back
    }


class Manifest:
    """The manifest of one output folder (see the module).

    Args:
        folder: The extraction's output folder.
        settings: This run's :func:`extraction_settings`.
    """

    def __init__(self, folder: str | os.PathLike[str], settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = dict(settings)
        self.files: dict[str, dict[str, Any]] = {}

    @property
    def path(self) -> Path:
        """``<folder>/extract_manifest.json``."""
        return self.folder / MANIFEST_NAME

    def open(self, *, overwrite: bool, expected_length: int | None = None) -> None:
        """Read the folder's manifest and check it against this run's settings.

        Args:
            overwrite: Start the folder over when the settings differ (the files are
                recomputed as the run reaches them), instead of refusing.
            expected_length: T of every file when it is fixed (``num_snippets``): checks the
                ``.npy`` files of a folder without a manifest.

        Raises:
            ValueError: The folder holds files made with other settings, and not
                ``overwrite``; the message names each difference and the fix.
        """
        try:
            saved = self._read()
        except ValueError:
            if not overwrite:
                raise
            saved = {"settings": {}}  # start over
        if saved is None:
            diffs = self._legacy_mismatch(expected_length)
        else:
            diffs = [
                f"{key}: {saved['settings'].get(key)!r} there, {value!r} now"
                for key, value in self.settings.items()
                if saved["settings"].get(key) != value
            ]
            if not diffs:
                self.files = dict(saved.get("files", {}))
        if diffs and not overwrite:
            raise ValueError(
                f"output folder {str(self.folder)!r} holds features made with other settings"
                f" ({'; '.join(diffs)}). Pass --overwrite (overwrite=True) to extract them"
                " again with these settings, or choose another output folder."
            )
        if diffs:
            logger.warning("%s: other settings (%s); every file is extracted again",
                           self.folder, "; ".join(diffs))  # fmt: skip
            self.files = {}

    def _read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            saved = json.loads(self.path.read_bytes().decode("utf-8"))
            if saved.get("format") != FORMAT or not isinstance(saved.get("settings"), dict):
                raise ValueError("not an sgs_tad.extract manifest")
        except (OSError, ValueError, AttributeError) as err:
            raise ValueError(
                f"{str(self.path)!r} is damaged or not an extraction manifest ({err}); the"
                " settings of the files beside it are unknown. Delete it, or pass --overwrite"
                " (overwrite=True) to extract everything again."
            ) from err
        return saved

    def _legacy_mismatch(self, expected_length: int | None) -> list[str]:
        existing = sorted(self.folder.glob(f"{self.settings['prefix']}*.npy"))
        if not existing:
            return []
        whole = []
        for path in existing:
            shape = npy_shape(path)
            if shape is None:
                continue  # extracted again anyway
            if len(shape) != 2 or (expected_length is not None and shape[0] != expected_length):
                length = expected_length if expected_length is not None else "T"
                return [f"{path.name} has shape {list(shape)}, this run makes [{length}, C]"]
            whole.append(path)
        logger.warning(
            "%s holds %d feature files but no %s (written before manifests): the %d whole ones"
            " are kept as done", self.folder, len(existing), MANIFEST_NAME, len(whole),
        )  # fmt: skip
        for path in whole:  # adopted: listed from now on
            self.record(path)
        return []

    def done(self, path: Path) -> bool:
        """Whether ``path`` is a finished file of this run's settings (else it is redone)."""
        shape = npy_shape(path)
        if shape is None:
            if path.exists():
                logger.warning("%s is empty or truncated: extracting it again", path)
            return False
        entry = self.files.get(path.name)
        if entry is None:  # not written by a run of these settings (or its record was lost)
            return False
        return list(shape) == entry["shape"] and path.stat().st_size == entry["bytes"]

    def record(self, path: Path) -> None:
        """Note a file just written."""
        shape = npy_shape(path)
        if shape is not None:
            self.files[path.name] = {"shape": list(shape), "bytes": path.stat().st_size}

    def write(self) -> None:
        """Write the manifest atomically (a first write also finds an unwritable folder)."""
        atomic_write_json(
            self.path,
            {
                "format": FORMAT,
                "version": VERSION,
                "settings": self.settings,
                "files": dict(sorted(self.files.items())),
            },
            indent=1,
        )
