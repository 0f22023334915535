"""Normalisation layers and frozen stages: what makes SGS exact, and the helpers to get there.

SGS runs the encoder over micro-batches of K snippets, twice for the sampled ones. Each snippet's
feature must therefore depend on that snippet alone. A BatchNorm in training mode breaks this twice
over: its output mixes the statistics of whatever else is in the micro-batch, and every call
updates its running statistics, so phase 3 sees different buffers from phase 1. The paper freezes
all BatchNorm layers (§4.1). The engine refuses a training-mode BatchNorm;
:func:`freeze_norm_layers` is the named way out, and ``norm_policy="allow"`` the explicit one.

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> training_batchnorms(net)
    ['1']
    >>> net = freeze_norm_layers(net)
    >>> training_batchnorms(net), type(net[1]).__name__
    ([], 'FrozenBatchNorm')
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["FrozenBatchNorm", "freeze_norm_layers", "freeze_stages", "training_batchnorms"]


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, whatever ``train()`` says.

    It normalises with the running statistics it was built from, in training and eval mode
    alike, and its affine parameters are buffers, so no optimiser updates them. Unlike calling
    ``bn.eval()``, a later ``model.train()`` cannot silently turn batch statistics back on.

    Args:
        num_features: Channel count C of inputs ``[M, C, *]``.
        eps: Added to the variance, as in :class:`torch.nn.BatchNorm2d`.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> FrozenBatchNorm:
        """Build a frozen copy of ``bn`` (its statistics and affine parameters)."""
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"cannot freeze {bn!r}: it has track_running_stats=False, so it has no running "
                "statistics to freeze. Build it with track_running_stats=True, or replace it by "
                "GroupNorm, which does not mix snippets."
            )
        frozen = cls(bn.num_features, eps=bn.eps)
        device, dtype = bn.running_mean.device, bn.running_mean.dtype
        frozen.to(device=device, dtype=dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight.detach())
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias.detach())
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"FrozenBatchNorm({self.num_features}) expects input [M, {self.num_features}, *]; "
                f"got shape {tuple(x.shape)}."
            )
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(view).to(x.dtype) + shift.view(view).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_norm_layers(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (1d/2d/3d, SyncBatchNorm) in ``module`` by :class:`FrozenBatchNorm`.

    The replacement happens in place on the children; the (possibly new) root is returned, so
    write ``encoder = freeze_norm_layers(encoder)``. Call it before building the optimiser: the
    BatchNorm affine parameters stop being parameters.

    Args:
        module: Any module, e.g. a pretrained encoder.

    Returns:
        The module with frozen normalisation layers.
    """
    if isinstance(module, _BatchNorm):
        return FrozenBatchNorm.from_batchnorm(module)
    for name, child in module.named_children():
        frozen = freeze_norm_layers(child)
        if frozen is not child:
            setattr(module, name, frozen)
    return module


def freeze_stages(module: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Stop gradients in the submodules named by ``prefixes`` (the paper freezes stages 1-2).

    Sets ``requires_grad=False`` on every parameter whose qualified name equals a prefix or
    starts with ``prefix + "."``. Train/eval mode is left alone: freeze normalisation layers
    with :func:`freeze_norm_layers`.

    Args:
        module: The encoder.
        prefixes: Qualified submodule names, e.g. ``["conv1", "layer1"]``.

    Returns:
        The names of the parameters that were frozen.

    Raises:
        ValueError: A prefix names no parameter of ``module``.
    """
    if isinstance(prefixes, str):
        raise TypeError(
            f"prefixes must be a sequence of names, got the string {prefixes!r}; "
            f"write [{prefixes!r}]."
        )
    frozen: list[str] = []
    params = dict(module.named_parameters())
    for prefix in prefixes:
        hits = [n for n in params if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({n.split(".")[0] for n in params})
            raise ValueError(
                f"freeze_stages: no parameter of {type(module).__name__} is under {prefix!r}. "
                f"Top-level names with parameters: {tops}."
            )
        for name in hits:
            params[name].requires_grad_(False)
            frozen.append(name)
    return frozen


def training_batchnorms(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of ``module`` that are in training mode (unsafe for SGS)."""
    return [
        name or type(module).__name__
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm) and m.training
    ]
