"""R(2+1)D-34 (Tran et al., CVPR 2018) in plain torch: ``[M, 3, L, H, W] -> [M, 512]``.

Every 3x3x3 convolution of a 3D ResNet-34 is factorised into a 1x3x3 spatial convolution to
M_i channels, BatchNorm, ReLU and a 3x1x1 temporal convolution, with M_i chosen so that the
factorised pair has about as many parameters as the full 3D kernel (Tran et al., §3.5):

    M_i = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i)),  t = d = 3,

computed for each convolution from its own input and output widths, as in the Caffe2 original
and in the IG65M / TSP checkpoints (torchvision's ``VideoResNet`` computes it once per block from
the block's input width, which differs in the first block of stages 2-4). The stem is the
Caffe2 one: 1x7x7 to 45 channels, then 3x1x1 to 64. Blocks per stage: [3, 4, 6, 3]. The feature
is the output of the last stage averaged over time and space.

Submodule names follow torchvision's ``VideoResNet`` (``stem.0``, ``layer1.0.conv1.0.0`` ...),
the naming of the IG65M (moabitcoin/ig65m-pytorch) and TSP (HumamAlwassel/TSP) checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from sgs_tad.encoders.base import VideoEncoder

__all__ = ["R2Plus1D34", "midplanes"]


def midplanes(in_planes: int, out_planes: int, *, t: int = 3, d: int = 3) -> int:
    """Width of the hidden layer of a (2+1)D convolution (Tran et al., §3.5).

    Example:
        >>> midplanes(64, 64), midplanes(64, 128), midplanes(128, 128)
        (144, 230, 288)
    """
    return (t * d * d * in_planes * out_planes) // (d * d * in_planes + t * out_planes)


class _Conv2Plus1D(nn.Sequential):
    """1x3x3 spatial conv (stride s in space), BN, ReLU, 3x1x1 temporal conv (stride s in time)."""

    def __init__(self, in_planes: int, out_planes: int, *, stride: int, bn_eps: float) -> None:
        mid = midplanes(in_planes, out_planes)
        super().__init__(
            nn.Conv3d(in_planes, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid, eps=bn_eps),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_planes, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class _BasicBlock(nn.Module):
    """Two (2+1)D convolutions with a residual connection (1x1x1 projection when shapes change)."""

    def __init__(self, inplanes: int, planes: int, *, stride: int, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            _Conv2Plus1D(inplanes, planes, stride=stride, bn_eps=bn_eps),
            nn.BatchNorm3d(planes, eps=bn_eps),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            _Conv2Plus1D(planes, planes, stride=1, bn_eps=bn_eps),
            nn.BatchNorm3d(planes, eps=bn_eps),
        )
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm3d(planes, eps=bn_eps),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class R2Plus1D34(VideoEncoder):
    """R(2+1)D-34 snippet encoder: ``[M, 3, L, H, W] -> [M, 512]``.

    The paper feeds 16 frames of 112x112 (§4.1); any L >= 1 and H, W >= 16 work. BatchNorm
    layers are ordinary ``BatchNorm3d``; for SGS, freeze them
    (:func:`sgs_tad.encoders.freeze_encoder`), as the paper does.

    Args:
        layers: Blocks per stage; [3, 4, 6, 3] is R(2+1)D-34, [2, 2, 2, 2] R(2+1)D-18 (with
            the per-convolution hidden widths, so not torchvision's ``r2plus1d_18`` weights).
        bn_eps: BatchNorm epsilon. 1e-3 matches the Caffe2-trained IG65M and TSP checkpoints
            (eps is not stored in a state dict, so it must be set here); torchvision uses 1e-5.

    Example:
        >>> enc = R2Plus1D34()
        >>> enc(torch.randn(1, 3, 4, 32, 32)).shape
        torch.Size([1, 512])
    """

    out_channels = 512
    stem_names = ("stem",)
    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self, *, layers: tuple[int, int, int, int] = (3, 4, 6, 3), bn_eps: float = 1e-3
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(
                f"layers must be four positive block counts, e.g. (3, 4, 6, 3), got {layers!r}."
            )
        if not bn_eps > 0:
            raise ValueError(f"bn_eps must be > 0 (1e-3 for IG65M/TSP weights), got {bn_eps!r}.")
        self.stem = nn.Sequential(
            nn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(45, eps=bn_eps),
            nn.ReLU(inplace=True),
            nn.Conv3d(45, 64, (3, 1, 1), (1, 1, 1), (1, 0, 0), bias=False),
            nn.BatchNorm3d(64, eps=bn_eps),
            nn.ReLU(inplace=True),
        )
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(_BasicBlock(inplanes, planes, stride=stride, bn_eps=bn_eps))
                inplanes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def run_stage(self, index: int, y: torch.Tensor) -> torch.Tensor:
        if index == 0:
            return self.stem(y)
        return getattr(self, self.stage_names[index - 1])(y)

    def head(self, y: torch.Tensor) -> torch.Tensor:
        return y.mean(dim=(2, 3, 4))
