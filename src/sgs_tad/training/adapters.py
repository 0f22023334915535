"""Detector adapters: train a detector that builds its own inputs and loss, unchanged.

Many TAD detectors do not take a feature tensor and return scores; they take a *batch
structure* and return their loss. ActionFormer's ``model(video_list)`` takes a list of
dicts, one per video, with ``"feats"`` of shape ``[C, T_i]`` plus the targets
(``"segments"`` ``[K_i, 2]``, ``"labels"`` ``[K_i]``), and returns a dict of losses whose
``"final_loss"`` is back-propagated. :func:`video_list_step` builds that structure from the
SGS features ``[B, N_max, C]`` and the batch, and is passed to
:class:`~sgs_tad.training.trainer.SGSTrainer` as ``detector_step``.

A detector may also cut the gradient to its inputs on purpose, because it was written for
frozen, pre-extracted features: ActionFormer pads the batch inside ``preprocessing``, which
is decorated with ``@torch.no_grad()``. The encoder would then never train. The trainer
detects it (``feats.grad`` stays ``None``) and stops with a message; :func:`enable_grad`
re-binds such a method, on that model instance only, to the undecorated function so the
padding keeps the graph. That is enough when the method works out of place. ActionFormer's is
not: it copies each video into the rows it gets by iterating over a new tensor, and autograd
refuses in-place writes into those views; replace its ``preprocessing`` by an out-of-place
padding instead (``examples/actionformer_e2e.py`` shows the ten lines).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sgs_tad import StepInfo
    >>> class Toy(nn.Module):                     # same interface as ActionFormer
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.proj = nn.Conv1d(4, 1, 1)
    ...     @torch.no_grad()
    ...     def preprocessing(self, video_list):
    ...         return torch.stack([v["feats"] for v in video_list])
    ...     def forward(self, video_list):
    ...         x = self.preprocessing(video_list)
    ...         return {"final_loss": self.proj(x).mean()}
    >>> model = Toy()
    >>> feats = torch.randn(2, 3, 4, requires_grad=True)   # [B, N_max, C]
    >>> batch = {"snippets": [torch.zeros(3, 1), torch.zeros(3, 1)]}
    >>> step, info = video_list_step(model, keys=()), StepInfo.from_lengths([3, 3])
    >>> step(feats, batch, info)["final_loss"].backward()
    >>> feats.grad is None                            # the no_grad padding cut the graph
    True
    >>> enable_grad(model, "preprocessing")
    >>> step(feats, batch, info)["final_loss"].backward()
    >>> feats.grad.shape
    torch.Size([2, 3, 4])
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal

import torch
from torch import nn

from sgs_tad.training.batches import check_batch
from sgs_tad.training.steps import StepInfo

__all__ = ["enable_grad", "snippet_lengths", "video_list_step"]


def snippet_lengths(snippets: Any) -> list[int]:
    """N_i of each video in a batch's ``"snippets"`` (tensor, tensor list or source list)."""
    if isinstance(snippets, torch.Tensor):
        return [int(snippets.shape[1])] * int(snippets.shape[0])
    return [int(s.shape[0]) if isinstance(s, torch.Tensor) else len(s) for s in snippets]


def video_list_step(
    model: Callable[[list[dict[str, Any]]], Any],
    *,
    keys: Sequence[str] = ("segments", "labels"),
    feats_key: str = "feats",
    layout: Literal["CT", "TC"] = "CT",
) -> Callable[[torch.Tensor, Mapping[str, Any], StepInfo], Any]:
    """A ``detector_step`` that calls ``model(video_list)`` (ActionFormer's interface).

    Video ``i`` becomes ``{feats_key: feats[i, :N_i] ([C, N_i] for "CT"), key: batch[key][i]
    for key in keys}``; the model's return value (a loss or a loss dict) is passed through.

    Args:
        model: the detector, called with the list of per-video dicts.
        keys: batch keys copied into each video's dict (the targets the model needs); pass
            the same names as ``required_keys`` to the trainer so a batch without them is
            refused before any compute.
        feats_key: the dict key of the features.
        layout: ``"CT"`` gives ``[C, N_i]`` (ActionFormer), ``"TC"`` gives ``[N_i, C]``.

    Returns:
        ``detector_step(feats, batch, info)`` for :class:`~sgs_tad.training.trainer.SGSTrainer`.
    """
    if layout not in ("CT", "TC"):
        raise ValueError(f"layout must be one of ['CT', 'TC']; got {layout!r}.")
    if isinstance(keys, str):
        raise TypeError(f"keys must be a sequence of names, got the string {keys!r}.")

    def detector_step(feats: torch.Tensor, batch: Mapping[str, Any], info: StepInfo) -> Any:
        check_batch(batch, tuple(keys))
        lengths = info.lengths
        if len(lengths) != feats.shape[0]:
            raise ValueError(
                f"the batch has {len(lengths)} videos but the features have B ="
                f" {feats.shape[0]}; pass the batch whose snippets were encoded."
            )
        video_list = []
        for i, n in enumerate(lengths):
            # Slices of the leaf keep the graph: the model's backward fills feats.grad.
            video = feats[i, :n]
            item: dict[str, Any] = {key: batch[key][i] for key in keys}
            item[feats_key] = video.transpose(0, 1) if layout == "CT" else video
            video_list.append(item)
        return model(video_list)

    return detector_step


def enable_grad(module: nn.Module, method: str) -> None:
    """Make ``module.<method>``, decorated with ``@torch.no_grad()``, run with grad.

    The method is re-bound on this instance only, to the function the decorator wrapped
    (``__wrapped__``), so padding or batching done there keeps the graph to the input
    features. Other instances and the class are untouched. The undecorated method must be
    differentiable: in-place writes into views of a new tensor (``for row, f in zip(out,
    feats): row[:n].copy_(f)``) raise under grad; override such a method instead.

    Args:
        module: the detector instance (e.g. an ActionFormer ``PtTransformer``).
        method: the method name (``"preprocessing"`` for ActionFormer).

    Raises:
        AttributeError: the module has no such method.
        TypeError: the method is not a decorated function (nothing to unwrap).
    """
    fn = getattr(type(module), method, None)
    if fn is None:
        raise AttributeError(
            f"{type(module).__name__} has no method {method!r}; name the method that runs"
            " under torch.no_grad (ActionFormer: 'preprocessing')."
        )
    inner = getattr(fn, "__wrapped__", None)
    if inner is None:
        raise TypeError(
            f"{type(module).__name__}.{method} has no __wrapped__ function: it is not"
            " decorated with @torch.no_grad() (or the decorator does not use functools.wraps)."
            " If it calls torch.no_grad() inside its body, override the method in a subclass."
        )
    setattr(module, method, types.MethodType(inner, module))
