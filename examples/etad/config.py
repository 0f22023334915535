"""Every size and weight of the ETAD detector, in one dataclass.

The defaults are the paper's (Fig. 5, Table 7, App. A.3); where the paper is silent they come
from the authors' released code, and ``docs/etad.md`` lists each such choice. ``small()`` is a
reduced preset that trains at several iterations per second on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["ETADConfig", "ProposalStrategy"]

#: The APS strategies of ``sgs_tad.detection.proposals.sample_proposals``.
ProposalStrategy = Literal[
    "random", "grid", "block", "fps", "kdpp", "iou_balanced", "scale_balanced"
]


@dataclass(frozen=True)
class ETADConfig:
    """Configuration of :class:`~etad.model.ETAD`.

    Attributes:
        in_channels: channels C of the input features ``[B, C, T]``.
        temporal_scale: number of snippets T the detector expects.
        max_duration: longest proposal D, in snippets (the proposal map is ``[D, T]``).
        channels: width of the enhanced feature sequence (Fig. 5: 256).
        lstm_hidden: hidden size of each of the two LSTMs (Fig. 5: 256).
        branch_channels: output channels of the convolution after each LSTM (Fig. 5: 256).
        conv_groups: groups of the 3-tap convolutions (authors' code: 4).
        norm_groups: GroupNorm groups after the feature-module convolutions (paper: 16).
        roi_channels: channels of the proposal features (Table 7: 128).
        extended_bins: bins of the extended proposal feature (Table 7: 32).
        boundary_bins: bins of the start and of the end feature (Table 7: 8).
        extend_ratio: the proposal is extended by this fraction of its length on each side.
        boundary_ratio: the start (end) window is the start (end) ± this fraction of the length.
        mid_dim: width of the first fully connected layer of each head (Table 7: 512).
        fc_dim: width of the following fully connected layers (Table 7: 128).
        fc_layers: number of ``fc_dim`` layers after the first one (Table 7: 3).
        share_extended_fc: one first layer shared by the three heads on the extended feature
            (authors' code) instead of one per head (literal reading of Table 7).
        stage_iou_thresholds: IoU threshold of each cascade stage; its length is the number of
            stages (paper: 0.7, 0.8, 0.9).
        aps_ratio: fraction of the valid proposals sampled per video in training (paper: 6 %).
        aps_strategy: name of the ``sgs_tad.detection.proposals`` sampler used in training.
        inference_aps_ratio: if set, sample this fraction with ``grid`` APS at inference
            (App. B.2); ``None`` keeps all proposals.
        inference_chunk: proposals per chunk at inference (bounds peak memory).
        boundary_pos_threshold: label above which a snippet / proposal boundary is positive.
        iou_cls_threshold: IoU above which a proposal is a positive for IoU classification.
        iou_reg_high: IoU above which a proposal is "high" for the balanced L2 loss.
        iou_reg_low: IoU at or below which a proposal is "low" for the balanced L2 loss.
        boundary_cls_weight: weight of the per-stage start/end classification loss.
        iou_cls_weight: weight of the IoU classification loss.
        iou_reg_weight: weight of the IoU regression loss (authors' code: 5).
        offset_weight: λ, the weight of the offset regression loss (paper: 10).
        cw_scale: the centre/width head's output is multiplied by this (authors' code: 0.5).
        seed: seed of the model's default generator, used when ``forward`` gets none.
    """

    in_channels: int = 2048
    temporal_scale: int = 128
    max_duration: int = 128
    channels: int = 256
    lstm_hidden: int = 256
    branch_channels: int = 256
    conv_groups: int = 4
    norm_groups: int = 16
    roi_channels: int = 128
    extended_bins: int = 32
    boundary_bins: int = 8
    extend_ratio: float = 0.5
    boundary_ratio: float = 0.25
    mid_dim: int = 512
    fc_dim: int = 128
    fc_layers: int = 3
    share_extended_fc: bool = True
    stage_iou_thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)
    aps_ratio: float = 0.06
    aps_strategy: ProposalStrategy = "random"
    inference_aps_ratio: float | None = None
    inference_chunk: int = 4096
    boundary_pos_threshold: float = 0.5
    iou_cls_threshold: float = 0.9
    iou_reg_high: float = 0.7
    iou_reg_low: float = 0.3
    boundary_cls_weight: float = 1.0
    iou_cls_weight: float = 1.0
    iou_reg_weight: float = 5.0
    offset_weight: float = 10.0
    cw_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        positive = [
            "in_channels",
            "temporal_scale",
            "max_duration",
            "channels",
            "lstm_hidden",
            "branch_channels",
            "conv_groups",
            "norm_groups",
            "roi_channels",
            "extended_bins",
            "boundary_bins",
            "mid_dim",
            "fc_dim",
            "inference_chunk",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ETADConfig.{name} must be a positive int, got {value!r}")
        if self.fc_layers < 0:
            raise ValueError(f"ETADConfig.fc_layers must be >= 0, got {self.fc_layers!r}")
        if self.max_duration > self.temporal_scale:
            raise ValueError(
                f"ETADConfig.max_duration={self.max_duration} exceeds "
                f"temporal_scale={self.temporal_scale}; use max_duration <= temporal_scale"
            )
        for name in ("in_channels", "channels", "lstm_hidden", "branch_channels"):
            if getattr(self, name) % self.conv_groups:
                raise ValueError(
                    f"ETADConfig.{name}={getattr(self, name)} is not divisible by "
                    f"conv_groups={self.conv_groups}; choose sizes that are multiples of it"
                )
        for name in ("channels", "branch_channels"):
            if getattr(self, name) % self.norm_groups:
                raise ValueError(
                    f"ETADConfig.{name}={getattr(self, name)} is not divisible by "
                    f"norm_groups={self.norm_groups}; choose sizes that are multiples of it"
                )
        if len(self.stage_iou_thresholds) < 1:
            raise ValueError("ETADConfig.stage_iou_thresholds needs at least one stage")
        for t in (*self.stage_iou_thresholds, self.iou_cls_threshold):
            if not 0.0 <= t < 1.0:
                raise ValueError(f"IoU thresholds must lie in [0, 1), got {t!r}")
        if self.aps_strategy not in get_args(ProposalStrategy):
            raise ValueError(
                f"ETADConfig.aps_strategy={self.aps_strategy!r} is unknown; choose one of "
                f"{', '.join(get_args(ProposalStrategy))}"
            )
        if not 0.0 < self.aps_ratio <= 1.0:
            raise ValueError(f"ETADConfig.aps_ratio must lie in (0, 1], got {self.aps_ratio!r}")
        ratio = self.inference_aps_ratio
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ValueError(
                f"ETADConfig.inference_aps_ratio must be None or lie in (0, 1], got {ratio!r}"
            )
        if self.extend_ratio < 0 or self.boundary_ratio <= 0:
            raise ValueError(
                f"extend_ratio must be >= 0 and boundary_ratio > 0, got "
                f"{self.extend_ratio!r} and {self.boundary_ratio!r}"
            )

    @property
    def num_stages(self) -> int:
        """Number of proposal evaluation modules in the cascade."""
        return len(self.stage_iou_thresholds)

    def replace(self, **changes: Any) -> ETADConfig:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def paper(cls, **changes: Any) -> ETADConfig:
        """The paper's sizes (the dataclass defaults), with ``changes`` applied."""
        return cls(**changes)

    @classmethod
    def small(cls, **changes: Any) -> ETADConfig:
        """A reduced detector for CPU runs and tests: same structure, narrower layers.

        0.61 M parameters at ``in_channels=256`` (the paper's sizes: 12.7 M at 256, 13.1 M at
        2048); at T = 128, batch 4 and APS 6 % a training step takes about 0.3 s of one CPU
        core.
        """
        sizes: dict[str, Any] = dict(
            in_channels=256,
            channels=64,
            lstm_hidden=64,
            branch_channels=64,
            roi_channels=32,
            extended_bins=16,
            boundary_bins=4,
            mid_dim=128,
            fc_dim=64,
            fc_layers=2,
        )
        sizes.update(changes)
        return cls(**sizes)
