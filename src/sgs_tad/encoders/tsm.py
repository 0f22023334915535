"""TSM-ResNet50 (Lin et al., ICCV 2019) in plain torch: a 2D ResNet50 with temporal shifts.

Each of the L frames of a snippet goes through a 2D ResNet50; inside every bottleneck the input
of the first 1x1 convolution is shifted along time ("residual shift", TSM's ``blockres``): the
first 1/8 of the channels take their values from the next frame, the second 1/8 from the
previous frame, the rest stay put, with zeros past the snippet's ends. The skip connection sees
the unshifted input. Frames of different snippets never mix. The snippet feature is the final
feature map averaged over frames and space: ``[M, 3, L, H, W] -> [M, 2048]``.

Submodule names follow torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.bn1``, ``layer1.0.downsample.0`` ...), so a torchvision ImageNet state dict loads as
is; :mod:`sgs_tad.encoders.checkpoints` converts the TSM repository's and mmaction2's layouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sgs_tad.encoders.base import VideoEncoder

__all__ = ["TSMResNet50", "temporal_shift"]


def temporal_shift(x: torch.Tensor, n_segment: int, *, fold_div: int = 8) -> torch.Tensor:
    """Shift part of the channels one frame along time, as in TSM.

    With ``fold = C // fold_div``: channels ``[0, fold)`` at frame t take the value of frame
    t + 1 (zero at the last frame), channels ``[fold, 2 fold)`` take frame t - 1 (zero at the
    first frame), the other channels are unchanged.

    Args:
        x: Frame features ``[M * n_segment, C, H, W]``, the frames of each snippet contiguous.
        n_segment: Frames per snippet.
        fold_div: The shifted fraction is ``2 / fold_div`` (1/8 each way by default).

    Returns:
        A new tensor of the shape of ``x``.
    """
    nt, c, h, w = x.shape
    if n_segment < 1 or nt % n_segment != 0:
        raise ValueError(
            f"temporal_shift: {nt} frames cannot be split into snippets of n_segment="
            f"{n_segment} frames; the leading dimension must be a multiple of n_segment."
        )
    fold = c // fold_div
    v = x.view(nt // n_segment, n_segment, c, h, w)
    # pad(..., (0, 0, 0, 0, 0, 0, 0, 1)) pads dim 1 (time) of [B, T, c, H, W] at its end.
    future = F.pad(v[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))
    past = F.pad(v[:, :-1, fold : 2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))
    out = torch.cat([future, past, v[:, :, 2 * fold :]], dim=2)
    return out.reshape(nt, c, h, w)


class _Bottleneck(nn.Module):
    """ResNet50 bottleneck (stride on the 3x3 conv) with a temporal shift before ``conv1``."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, *, stride: int, fold_div: int, shift: bool
    ) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        self.fold_div = fold_div
        self.shift = shift

    def forward(self, x: torch.Tensor, n_segment: int) -> torch.Tensor:
        branch = temporal_shift(x, n_segment, fold_div=self.fold_div) if self.shift else x
        out = self.relu(self.bn1(self.conv1(branch)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TSMResNet50(VideoEncoder):
    """TSM-ResNet50 snippet encoder: ``[M, 3, L, H, W] -> [M, 2048]``.

    The number of segments of TSM is the number of frames L of each snippet (8 in the paper),
    read from the input at every call. BatchNorm layers are ordinary ``BatchNorm2d``; for SGS,
    freeze them (:func:`sgs_tad.encoders.freeze_encoder`), as the paper does.

    Args:
        fold_div: Shift 1/fold_div of the channels each way (TSM default 8).
        shift: False gives a plain per-frame ResNet50 (TSN), for ablations.

    Example:
        >>> enc = TSMResNet50()
        >>> enc(torch.randn(2, 3, 4, 32, 32)).shape
        torch.Size([2, 2048])
    """

    out_channels = 2048
    stem_names = ("conv1", "bn1")
    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, *, fold_div: int = 8, shift: bool = True) -> None:
        super().__init__()
        if isinstance(fold_div, bool) or not isinstance(fold_div, int) or fold_div < 2:
            raise ValueError(f"fold_div must be an int >= 2 (TSM uses 8), got {fold_div!r}.")
        self.fold_div = fold_div
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            layer = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layer.append(
                    _Bottleneck(inplanes, planes, stride=stride, fold_div=fold_div, shift=shift)
                )
                inplanes = planes * _Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # Between stages the frames are kept as [M, L, C, H, W] (one row per snippet); the 2-D
    # layers see [M * L, C, H, W], the L frames of each snippet contiguous (views, no copies).

    def run_stage(self, index: int, y: torch.Tensor) -> torch.Tensor:
        if index == 0:
            m, _, frames, h, w = y.shape
            # [M, 3, L, H, W] -> [M * L, 3, H, W]
            y = y.transpose(1, 2).reshape(m * frames, 3, h, w)
            y = self.maxpool(self.relu(self.bn1(self.conv1(y))))
            return y.view(m, frames, *y.shape[1:])
        m, frames = y.shape[:2]
        y = y.flatten(0, 1)
        for block in getattr(self, self.stage_names[index - 1]):
            y = block(y, frames)
        return y.view(m, frames, *y.shape[1:])

    def head(self, y: torch.Tensor) -> torch.Tensor:
        # Average over space, then over the L frames of each snippet.
        return y.mean(dim=(3, 4)).mean(dim=1)
