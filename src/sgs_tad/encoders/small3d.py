"""A small residual 3D CNN for CPU runs: ``[M, 3, L, H, W] -> [M, C]`` at 32-64 px.

It stands in for TSM / R(2+1)D where a real backbone would not fit the time budget (the
synthetic set, tests, the CPU main job). Its normalisation is GroupNorm (or nothing), which
works on each snippet alone, so SGS with it is exact in training mode: a snippet's feature does
not depend on which other snippets share its micro-batch.

Layout: a stem (1x5x5 spatial conv, stride 2 in space, and a 3x1x1 temporal conv), then one
residual block of two 3x3x3 convolutions per stage; every stage after the first halves space
(by 2x2 average pooling before the stage) and time (while more than ``min_time`` frames
remain), so the same weights serve any snippet length. The feature is the last stage's output
averaged over time and space.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sgs_tad.encoders.base import VideoEncoder

__all__ = ["Small3DCNN"]

NormKind = Literal["group", "none"]


def _norm(kind: NormKind, channels: int, groups: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    return nn.GroupNorm(min(groups, channels), channels)


class _Block(nn.Module):
    """Two 3x3x3 convs with a residual connection (1x1x1 projection when the shape changes)."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        norm: NormKind,
        groups: int,
    ) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv3d(inplanes, planes, 3, padding=1, bias=bias)
        self.norm1 = _norm(norm, planes, groups)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=1, bias=bias)
        self.norm2 = _norm(norm, planes, groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if inplanes != planes:
            self.downsample = nn.Conv3d(inplanes, planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Small3DCNN(VideoEncoder):
    """Small residual 3D CNN snippet encoder: ``[M, 3, L, H, W] -> [M, widths[-1]]``.

    Args:
        widths: Channels of the stem and of each stage; the last is the feature size C.
            The default (16, 32, 64, 128) has about 0.9 M parameters.
        norm: "group" (GroupNorm with up to ``groups`` groups) or "none"; both are exact under
            SGS in training mode.
        groups: Maximum number of GroupNorm groups.
        min_time: Stages stop halving time once it is at most this many frames.

    Example:
        >>> enc = Small3DCNN()
        >>> enc(torch.randn(5, 3, 8, 32, 32)).shape
        torch.Size([5, 128])
    """

    stem_names = ("stem",)

    def __init__(
        self,
        *,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        norm: NormKind = "group",
        groups: int = 8,
        min_time: int = 2,
    ) -> None:
        super().__init__()
        if len(widths) < 2 or any(not isinstance(c, int) or c < 1 for c in widths):
            raise ValueError(
                f"widths must hold a stem width and at least one stage width (positive ints), "
                f"e.g. (16, 32, 64, 128); got {widths!r}."
            )
        if norm not in ("group", "none"):
            raise ValueError(f"norm must be one of 'group', 'none'; got {norm!r}.")
        if groups < 1 or min_time < 1:
            raise ValueError(f"groups and min_time must be >= 1, got {groups} and {min_time}.")
        self.out_channels = widths[-1]
        self.min_time = min_time
        bias = norm == "none"
        stem = widths[0]
        self.stem = nn.Sequential(
            nn.Conv3d(3, stem, (1, 5, 5), (1, 2, 2), (0, 2, 2), bias=bias),
            _norm(norm, stem, groups),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem, stem, (3, 1, 1), 1, (1, 0, 0), bias=bias),
            _norm(norm, stem, groups),
            nn.ReLU(inplace=True),
        )
        names = []
        inplanes = stem
        for i, planes in enumerate(widths[1:]):
            name = f"layer{i + 1}"
            block = _Block(inplanes, planes, norm=norm, groups=groups)
            self.add_module(name, block)
            names.append(name)
            inplanes = planes
        self.stage_names = tuple(names)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def run_stage(self, index: int, y: torch.Tensor) -> torch.Tensor:
        if index == 0:
            return self.stem(y)
        if index > 1:
            # Downsample between stages with average pooling: halves space, and time while
            # it is longer than min_time, so short snippets (L = 4) work as well as long.
            kt = 2 if y.shape[2] > self.min_time else 1
            ks = 2 if min(y.shape[3], y.shape[4]) >= 2 else 1
            y = nn.functional.avg_pool3d(y, (kt, ks, ks), ceil_mode=True)
        return getattr(self, self.stage_names[index - 1])(y)

    def head(self, y: torch.Tensor) -> torch.Tensor:
        return y.mean(dim=(2, 3, 4))
