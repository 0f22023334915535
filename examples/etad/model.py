"""The ETAD detector: feature enhancement, boundary head and the cascade of proposal evaluations.

Input features are ``[B, C, T]`` (channels first, like ``nn.Conv1d``); the SGS encoder's
``[B, N, C]`` output needs ``.transpose(1, 2)``. Segments are normalised to the video.

Example:
    >>> cfg = ETADConfig.small(in_channels=32, temporal_scale=16, max_duration=16)
    >>> model = ETAD(cfg)
    >>> feats = torch.randn(2, 32, 16)
    >>> gts = [torch.tensor([[0.2, 0.5]]), torch.tensor([[0.1, 0.3], [0.6, 0.9]])]
    >>> losses = model(feats, gts, generator=torch.Generator().manual_seed(0))
    >>> losses["loss"].backward()
    >>> preds = model.predict(feats)
    >>> preds[0].segments.shape, preds[0].start.shape
    (torch.Size([136, 2]), torch.Size([16]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from sgs_tad.detection.proposals import ProposalMap, proposal_descriptors, sample_proposals

from .config import ETADConfig
from .losses import balanced_bce, balanced_l2, offset_loss, sampled_bce
from .modules import BoundaryHead, FeatureEnhancement, ProposalEvaluation
from .targets import boundary_labels, decode_offsets, encode_offsets, segment_iou

__all__ = ["ETAD", "ETADPrediction"]

#: APS strategies that need per-proposal features
#: (``sgs_tad.detection.proposals.proposal_descriptors``).
FEATURE_GUIDED = ("fps", "kdpp")
#: Shortest box (normalised) a refinement may produce; shorter or reversed boxes are repaired.
MIN_LENGTH = 1e-4
#: Ground truth may exceed [0, 1] by this much (rounding in the annotation's seconds).
_GT_SLACK = 1e-3


@dataclass
class ETADPrediction:
    """Inference output for one video, everything normalised to the video and detached.

    Attributes:
        segments: ``[P, 2]`` refined proposals, the mean over the cascade stages of each stage's
            refined box.
        proposals: ``[P, 2]`` the proposals the cascade started from.
        start: ``[T]`` startness probability of each snippet.
        end: ``[T]`` endness probability of each snippet.
        iou_cls: ``[P]`` IoU-classification score, mean over the stages.
        iou_reg: ``[P]`` IoU-regression score, mean over the stages.
    """

    segments: Tensor
    proposals: Tensor
    start: Tensor
    end: Tensor
    iou_cls: Tensor
    iou_reg: Tensor

    @property
    def iou_score(self) -> Tensor:
        """``[P]`` p_iou = iou_cls * iou_reg (App. A.4 with BMN's fusion of the two)."""
        return self.iou_cls * self.iou_reg


def _sanitize(segments: Tensor) -> Tensor:
    """Order each box's limits and give it at least ``MIN_LENGTH``."""
    lo = torch.minimum(segments[:, 0], segments[:, 1])
    hi = torch.maximum(segments[:, 0], segments[:, 1]).clamp(min=lo + MIN_LENGTH)
    return torch.stack((lo, hi), dim=1)


class ETAD(nn.Module):
    """The ETAD action detector (§3.1, App. A).

    Args:
        config: sizes and loss weights; ``ETADConfig()`` is the paper's detector.

    ``forward(features, gt_segments)`` returns the training losses (with APS);
    ``predict(features)`` returns the detections' raw material for every video.
    """

    def __init__(self, config: ETADConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ETADConfig()
        cfg = self.config
        self.enhance = FeatureEnhancement(cfg)
        self.boundary = BoundaryHead(cfg)
        self.stages = nn.ModuleList(ProposalEvaluation(cfg) for _ in range(cfg.num_stages))
        self.proposal_map = ProposalMap(cfg.temporal_scale, cfg.max_duration)
        self._generator: torch.Generator | None = None
        self.reset_parameters()

    def _stage_list(self) -> list[ProposalEvaluation]:
        return [cast(ProposalEvaluation, stage) for stage in self.stages]

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases for convolutions and linear layers."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ shared pieces
    def _check_features(self, features: Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.temporal_scale)
        if features.dim() != 3 or tuple(features.shape[1:]) != expected:
            hint = ""
            if features.dim() == 3 and tuple(features.shape[1:]) == expected[::-1]:
                hint = "; the features look like [B, T, C]: pass features.transpose(1, 2)"
            raise ValueError(
                f"features must be [B, C={cfg.in_channels}, T={cfg.temporal_scale}], got "
                f"{tuple(features.shape)}{hint}"
            )

    def _default_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.config.seed)
        return self._generator

    def _sample(
        self, x: Tensor, gt_segments: Sequence[Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """APS per video: ``([R, 2] proposals, [R] video index)``."""
        cfg, pmap = self.config, self.proposal_map
        chosen, owners = [], []
        for b, gt in enumerate(gt_segments):
            feats = None
            if cfg.aps_strategy in FEATURE_GUIDED:
                feats = proposal_descriptors(x[b].detach().t().cpu(), pmap)
            idx = sample_proposals(
                pmap,
                cfg.aps_ratio,
                cfg.aps_strategy,
                generator=generator,
                features=feats,
                gt_segments=gt.detach().cpu(),
            )
            chosen.append(idx)
            owners.append(torch.full_like(idx, b))
        index = torch.cat(chosen)
        segments = pmap.coords[index].to(device=x.device, dtype=x.dtype)
        return segments, torch.cat(owners).to(x.device)

    # ------------------------------------------------------------------ training
    def forward(
        self,
        features: Tensor,
        gt_segments: Sequence[Tensor],
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Training losses of one batch, with APS.

        Args:
            features: ``[B, C, T]`` snippet features.
            gt_segments: ``B`` tensors ``[G_b, 2]`` of normalised ground-truth segments
                (``G_b`` may be 0: a video without actions).
            generator: CPU generator for APS and the losses' random subsets; defaults to the
                model's own, seeded with ``config.seed``.

        Returns:
            ``"loss"`` (the total, eq. 5, to back-propagate) and detached terms for logging:
            ``"boundary"``, and per stage ``i`` (from 1) ``"stage{i}"``,
            ``"stage{i}_boundary"``, ``"stage{i}_iou_cls"``, ``"stage{i}_iou_reg"``,
            ``"stage{i}_offset"`` (unweighted).
        """
        self._check_features(features)
        if len(gt_segments) != features.shape[0]:
            raise ValueError(
                f"gt_segments has {len(gt_segments)} entries for a batch of "
                f"{features.shape[0]} videos; pass one [G, 2] tensor per video"
            )
        for b, gt in enumerate(gt_segments):
            if not isinstance(gt, Tensor) or gt.dim() != 2 or gt.shape[1] != 2:
                raise ValueError(f"gt_segments[{b}] must be a [G, 2] tensor, got {gt!r}")
            bad = ~torch.isfinite(gt).all(dim=1) | (gt[:, 1] < gt[:, 0])
            bad |= (gt < -_GT_SLACK).any(dim=1) | (gt > 1 + _GT_SLACK).any(dim=1)
            if bool(bad.any()):
                raise ValueError(
                    f"gt_segments[{b}] has segments {gt[bad].tolist()} that are not normalised "
                    "[start, end] with 0 <= start <= end <= 1; divide by the video duration "
                    "and clip to [0, 1]"
                )
        cfg = self.config
        gen = generator if generator is not None else self._default_generator()
        dev, dt = features.device, features.dtype
        gts = [gt.to(device=dev, dtype=dt) for gt in gt_segments]
        t = cfg.temporal_scale

        x = self.enhance(features)
        boundary_logits = self.boundary(x)  # [B, 2, T]
        labels = [boundary_labels(gt, t) for gt in gts]
        start_labels = torch.stack([s for s, _ in labels])  # [B, T]
        end_labels = torch.stack([e for _, e in labels])
        thr = cfg.boundary_pos_threshold
        loss_boundary = balanced_bce(
            boundary_logits[:, 0], start_labels, threshold=thr
        ) + balanced_bce(boundary_logits[:, 1], end_labels, threshold=thr)

        segments, owner = self._sample(x, gt_segments, gen)
        gt_pad, gt_valid = _pad(gts)
        out: dict[str, Tensor] = {"boundary": loss_boundary.detach()}
        total = loss_boundary
        for i, (stage, stage_thr) in enumerate(
            zip(self._stage_list(), cfg.stage_iou_thresholds), 1
        ):
            pred = stage.evaluate(stage.features(x), segments, owner)
            matched, iou = _match(segments, owner, gt_pad, gt_valid)
            index = _snippet_index(segments, t)  # [R, 2] snippets of the start and the end
            terms = {
                "boundary": balanced_bce(
                    pred.boundary_logits[:, 0], start_labels[owner, index[:, 0]], threshold=thr
                )
                + balanced_bce(
                    pred.boundary_logits[:, 1], end_labels[owner, index[:, 1]], threshold=thr
                ),
                "iou_cls": sampled_bce(
                    pred.iou_logits[:, 0], iou > cfg.iou_cls_threshold, generator=gen
                ),
                "iou_reg": balanced_l2(
                    pred.iou_logits[:, 1].sigmoid(),
                    iou,
                    high=cfg.iou_reg_high,
                    low=cfg.iou_reg_low,
                    generator=gen,
                ),
                "offset": offset_loss(
                    pred.offsets, encode_offsets(segments, matched), iou > stage_thr
                ),
            }
            stage_loss = (
                cfg.boundary_cls_weight * terms["boundary"]
                + cfg.iou_cls_weight * terms["iou_cls"]
                + cfg.iou_reg_weight * terms["iou_reg"]
                + cfg.offset_weight * terms["offset"]
            )
            total = total + stage_loss
            out[f"stage{i}"] = stage_loss.detach()
            out.update({f"stage{i}_{name}": value.detach() for name, value in terms.items()})
            # the next stage starts from the refined boxes but does not back-propagate into
            # this stage's offsets through them (as in Cascade R-CNN): detach
            segments = _sanitize(decode_offsets(segments, pred.offsets.detach()))
        out["loss"] = total
        return out

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(
        self, features: Tensor, *, aps_ratio: float | Literal["config"] | None = "config"
    ) -> list[ETADPrediction]:
        """Proposals, boundary probabilities and IoU scores for every video.

        Args:
            features: ``[B, C, T]``.
            aps_ratio: evaluate only a ``grid`` APS subset of this fraction of the proposals
                (App. B.2); ``None`` evaluates all of them; ``"config"`` (default) uses
                ``config.inference_aps_ratio``.

        Returns:
            One :class:`ETADPrediction` per video.
        """
        self._check_features(features)
        cfg, pmap = self.config, self.proposal_map
        if isinstance(aps_ratio, str):
            if aps_ratio != "config":
                raise ValueError(f"aps_ratio must be a float, None or 'config', got {aps_ratio!r}")
            aps_ratio = cfg.inference_aps_ratio
        b = features.shape[0]
        if aps_ratio is None:
            index = torch.arange(pmap.num_proposals)
        else:
            index = sample_proposals(pmap, aps_ratio, "grid")
        proposals = pmap.coords[index].to(device=features.device, dtype=features.dtype)
        p = proposals.shape[0]

        x = self.enhance(features)
        probs = self.boundary(x).sigmoid()  # [B, 2, T]
        stage_feats = [stage.features(x) for stage in self._stage_list()]
        all_segments = proposals.repeat(b, 1)  # [B*P, 2]
        all_owner = torch.arange(b, device=features.device).repeat_interleave(p)
        refined, iou = [], []
        for lo in range(0, b * p, cfg.inference_chunk):
            segments = all_segments[lo : lo + cfg.inference_chunk]
            owner = all_owner[lo : lo + cfg.inference_chunk]
            box_sum = torch.zeros_like(segments)
            iou_sum = segments.new_zeros(segments.shape[0], 2)
            for stage, feats in zip(self._stage_list(), stage_feats):
                pred = stage.evaluate(feats, segments, owner)
                boxes = decode_offsets(segments, pred.offsets)
                box_sum += boxes
                iou_sum += pred.iou_logits.sigmoid()
                segments = _sanitize(boxes)
            refined.append(box_sum / cfg.num_stages)
            iou.append(iou_sum / cfg.num_stages)
        boxes_all = torch.cat(refined).view(b, p, 2)
        iou_all = torch.cat(iou).view(b, p, 2)
        return [
            ETADPrediction(
                segments=boxes_all[v],
                proposals=proposals,
                start=probs[v, 0],
                end=probs[v, 1],
                iou_cls=iou_all[v, :, 0],
                iou_reg=iou_all[v, :, 1],
            )
            for v in range(b)
        ]


def _pad(gts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ragged ground truth: ``([B, G_max, 2], bool [B, G_max])``, ``G_max >= 1``."""
    g_max = max(1, max(gt.shape[0] for gt in gts))
    ref = gts[0]
    padded = ref.new_zeros(len(gts), g_max, 2)
    valid = torch.zeros(len(gts), g_max, dtype=torch.bool, device=ref.device)
    for b, gt in enumerate(gts):
        padded[b, : gt.shape[0]] = gt
        valid[b, : gt.shape[0]] = True
    return padded, valid


def _match(
    segments: Tensor, owner: Tensor, gt_pad: Tensor, gt_valid: Tensor
) -> tuple[Tensor, Tensor]:
    """Best ground truth of each segment within its own video: ``([R, 2], [R] IoU)``.

    A video without ground truth gives IoU 0 (and an unused dummy match).
    """
    iou = _batched_iou(segments, gt_pad[owner])  # [R, G_max]
    iou = iou.masked_fill(~gt_valid[owner], -1.0)
    best, index = iou.max(dim=1)
    matched = gt_pad[owner, index]
    return matched, best.clamp(min=0)


def _batched_iou(segments: Tensor, gts: Tensor) -> Tensor:
    """IoU of ``segments [R, 2]`` with ``gts [R, G, 2]`` row by row: ``[R, G]``."""
    return segment_iou(segments.unsqueeze(1), gts).squeeze(1)


def _snippet_index(points: Tensor, temporal_scale: int) -> Tensor:
    """Snippet ``floor(x * T)`` (clipped) of normalised times, as in sgs_tad.detection."""
    return (points * temporal_scale).floor().long().clamp(0, temporal_scale - 1)
