"""Snippet sources: where the engine gets the snippets of one video.

The engine accepts three kinds of input (see :class:`~sgs_tad.SequentializedGradientSampler`):
a tensor ``[B, N, *S]``, a list of per-video tensors ``[N_i, *S]``, or a list of
:class:`SnippetSource` objects. A source decodes only the snippets it is asked for, so a long
video is never held in memory whole: the engine asks for one micro-batch at a time.

A source is any object with ``__len__`` (the number of snippets N) and
``get_snippets(indices)`` returning ``[len(indices), *S]`` for a 1-D ``LongTensor`` of
indices in ``[0, N)``. It must return the same values every time it is asked for the same
indices (phase 3 asks again for what phase 1 already decoded), so random augmentation must
be decided once per video (for example when the source is built), not per call.

Example:
    >>> import torch
    >>> src = TensorSource(torch.arange(12.0).view(6, 2))
    >>> len(src), src.get_snippets(torch.tensor([1, 4])).tolist()
    (6, [[2.0, 3.0], [8.0, 9.0]])
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["NonFiniteSnippetsError", "SnippetReadError", "SnippetSource", "TensorSource"]


class SnippetReadError(RuntimeError):
    """A source could not produce its snippets: an unreadable or corrupt video, a missing file.

    Sources raise it (or a subclass) chained to the decoder's error, so that the trainer's
    ``on_bad_video`` policy can skip the video and count it instead of losing the epoch.

    Attributes:
        video_id: The video's id, when the source knows it.
        path: The file that failed, when there is one.
        reason: ``"missing file"`` (the file is gone) or ``"unreadable"`` (anything else).
    """

    def __init__(
        self,
        message: str,
        *,
        video_id: str | None = None,
        path: object = None,
        reason: str = "unreadable",
    ) -> None:
        super().__init__(message)
        self.video_id = video_id
        self.path = path
        self.reason = reason


class NonFiniteSnippetsError(ValueError):
    """A video's input values (snippets or features) hold NaN or inf.

    Raised where the values are read, naming the video, so that a corrupt feature file is not
    later blamed on the loss or a normalisation layer.

    Attributes:
        video_id: The video's id, when known.
        path: The file the values came from, when there is one.
    """

    def __init__(self, message: str, *, video_id: str | None = None, path: object = None) -> None:
        super().__init__(message)
        self.video_id = video_id
        self.path = path


@runtime_checkable
class SnippetSource(Protocol):
    """The protocol of a lazy per-video snippet source."""

    def __len__(self) -> int:
        """Number of snippets N of the video."""
        ...

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        """Return the snippets ``[len(indices), *S]`` at ``indices`` (1-D ``LongTensor``)."""
        ...


class TensorSource:
    """A :class:`SnippetSource` over snippets already in memory, ``[N, *S]``."""

    def __init__(self, snippets: torch.Tensor) -> None:
        if not isinstance(snippets, torch.Tensor) or snippets.dim() < 1:
            shape = tuple(snippets.shape) if isinstance(snippets, torch.Tensor) else None
            raise TypeError(
                f"TensorSource expects a tensor [N, *S]; got {type(snippets).__name__} "
                f"(shape {shape}). Pass one video's snippets as a tensor with N first."
            )
        self.snippets = snippets

    def __len__(self) -> int:
        return int(self.snippets.shape[0])

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.device != self.snippets.device:
            # non_blocking: a blocking host-to-device copy would wait for the device's queue.
            indices = indices.to(self.snippets.device, non_blocking=True)
        return self.snippets[indices]
