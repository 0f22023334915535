"""The three building blocks of the ETAD detector.

- :class:`FeatureEnhancement` (App. A.1, Fig. 5): a convolution, then a forward LSTM and a
  backward LSTM (each followed by a convolution) beside a convolution on the residual path, the
  three concatenated and fused by a 1x1 convolution. GroupNorm + ReLU after every convolution.
- :class:`BoundaryHead` (§3.1): two convolutions giving startness and endness per snippet.
- :class:`ProposalEvaluation` (App. A.2, Table 7): one stage of the cascade. RoI features of
  each proposal (the extended proposal and windows on its start and end), fully connected heads
  for start/end offsets, centre/width offsets, IoU (classification and regression) and the
  start/end classification branch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .config import ETADConfig
from .roi import boundary_windows, extend_segments, roi_interpolate

__all__ = ["BoundaryHead", "FeatureEnhancement", "ProposalEvaluation", "StageOutput", "mlp"]


def _conv_norm_relu(cin: int, cout: int, kernel: int, groups: int, norm_groups: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.GroupNorm(norm_groups, cout),
        nn.ReLU(inplace=True),
    )


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ... -> dims[-1]``, ReLU between them (not after)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FeatureEnhancement(nn.Module):
    """Bidirectional LSTM context with a residual path (Fig. 5).

    Shapes: ``[B, in_channels, T] -> [B, channels, T]``.
    """

    def __init__(self, config: ETADConfig) -> None:
        super().__init__()
        c, h, br = config.channels, config.lstm_hidden, config.branch_channels
        g, ng = config.conv_groups, config.norm_groups
        self.stem = _conv_norm_relu(config.in_channels, c, 3, g, ng)
        self.lstm_forward = nn.LSTM(c, h, batch_first=True)
        self.lstm_backward = nn.LSTM(c, h, batch_first=True)
        self.conv_forward = _conv_norm_relu(h, br, 3, g, ng)
        self.conv_backward = _conv_norm_relu(h, br, 3, g, ng)
        self.conv_residual = _conv_norm_relu(c, c, 3, g, ng)
        self.fuse = _conv_norm_relu(2 * br + c, c, 1, g, ng)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, C_in, T]`` -> ``[B, C, T]``."""
        x = self.stem(features)  # [B, C, T]
        seq = x.transpose(1, 2)  # [B, T, C] for the batch-first LSTMs
        fwd, _ = self.lstm_forward(seq)
        bwd, _ = self.lstm_backward(seq.flip(1))  # reads the video from its end
        fwd = self.conv_forward(fwd.transpose(1, 2))
        bwd = self.conv_backward(bwd.flip(1).transpose(1, 2))  # back to forward time order
        return self.fuse(torch.cat((fwd, self.conv_residual(x), bwd), dim=1))


class BoundaryHead(nn.Module):
    """Startness and endness logits of every snippet: ``[B, C, T] -> [B, 2, T]``."""

    def __init__(self, config: ETADConfig) -> None:
        super().__init__()
        c = config.channels
        self.layers = nn.Sequential(
            nn.Conv1d(c, c, 3, padding=1, groups=config.conv_groups),
            nn.ReLU(inplace=True),
            nn.Conv1d(c, 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T]`` -> logits ``[B, 2, T]`` (start, end); a sigmoid gives probabilities."""
        return self.layers(x)


class StageOutput(NamedTuple):
    """Predictions of one cascade stage for ``R`` proposals.

    Attributes:
        offsets: ``[R, 4]`` (start, end, centre, log-width), see ``targets.decode_offsets``.
        boundary_logits: ``[R, 2]`` start / end classification logits.
        iou_logits: ``[R, 2]`` IoU classification / regression logits.
    """

    offsets: Tensor
    boundary_logits: Tensor
    iou_logits: Tensor


class ProposalEvaluation(nn.Module):
    """One proposal evaluation module (Table 7).

    Call :meth:`features` once per batch (``[B, C, T] -> [B, roi_channels, T]``), then
    :meth:`evaluate` on any number of proposals.
    """

    def __init__(self, config: ETADConfig) -> None:
        super().__init__()
        c, rc = config.channels, config.roi_channels
        self.config = config
        # stage-specific adaptation with a residual (authors' code), then the reduction to the
        # 128 channels of Table 7
        self.adapt = nn.Sequential(
            nn.Conv1d(c, c, 3, padding=1, groups=config.conv_groups), nn.ReLU(inplace=True)
        )
        self.reduce = nn.Sequential(nn.Conv1d(c, rc, 3, padding=1), nn.ReLU(inplace=True))

        ext_in, bnd_in = rc * config.extended_bins, rc * config.boundary_bins
        mid, fc, n = config.mid_dim, config.fc_dim, config.fc_layers
        tail = [fc] * n
        self.start_head = mlp([bnd_in, mid, *tail, 1])
        self.end_head = mlp([bnd_in, mid, *tail, 1])
        if config.share_extended_fc:
            self.extended_trunk: nn.Module = nn.Sequential(
                nn.Linear(ext_in, mid), nn.ReLU(inplace=True)
            )
            first = [mid]
        else:
            self.extended_trunk = nn.Identity()
            first = [ext_in, mid]
        self.centre_width_head = mlp([*first, *tail, 2])
        self.iou_head = mlp([*first, *tail, 2])
        self.boundary_head = mlp([*first, *tail, 2])

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, T]`` -> ``[B, roi_channels, T]``, the sequence the RoIs are read from."""
        return self.reduce(x + self.adapt(x))

    def evaluate(self, features: Tensor, segments: Tensor, batch_index: Tensor) -> StageOutput:
        """Evaluate ``R`` proposals.

        Args:
            features: ``[B, roi_channels, T]`` from :meth:`features`.
            segments: ``[R, 2]`` normalised proposals (not differentiated).
            batch_index: ``[R]`` long, the video of each proposal.

        Returns:
            :class:`StageOutput` with ``[R, ...]`` tensors.
        """
        cfg = self.config
        extended = extend_segments(segments, cfg.extend_ratio)
        start_win, end_win = boundary_windows(segments, cfg.boundary_ratio)
        ext_feat = roi_interpolate(features, extended, batch_index, cfg.extended_bins)
        start_feat = roi_interpolate(features, start_win, batch_index, cfg.boundary_bins)
        end_feat = roi_interpolate(features, end_win, batch_index, cfg.boundary_bins)

        trunk = self.extended_trunk(ext_feat.flatten(1))
        offsets = torch.cat(
            (
                self.start_head(start_feat.flatten(1)),
                self.end_head(end_feat.flatten(1)),
                self.centre_width_head(trunk) * cfg.cw_scale,
            ),
            dim=1,
        )
        return StageOutput(offsets, self.boundary_head(trunk), self.iou_head(trunk))
