"""The main job's detector: ETAD plus a class head, with the input standardiser before both.

ActivityNet detectors take video-level class scores from a separate classifier and fuse the
top-2 classes with each class-agnostic proposal (App. A.4); :class:`Detector` trains such a
head together with ETAD. ``detector(feats, segments, labels, generator=...)`` returns the
training losses (ETAD's with APS, plus the class loss) and :meth:`Detector.predict` the
proposals and class scores, so that the main job's detector step is one call.

Example:
    >>> import torch
    >>> from etad import ETADConfig
    >>> config = ETADConfig.small(in_channels=8, temporal_scale=16, max_duration=16)
    >>> detector = Detector(config, num_classes=3)
    >>> feats = torch.randn(2, 16, 8)                             # [B, T, C]
    >>> segments = [torch.tensor([[0.2, 0.6]]), torch.zeros(0, 2)]
    >>> labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    >>> losses = detector(feats, segments, labels, generator=torch.Generator().manual_seed(0))
    >>> "loss" in losses and "cls_loss" in losses
    True
    >>> preds, probs = detector.eval().predict(feats)
    >>> len(preds), tuple(probs.shape)
    (2, (2, 3))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import ETADConfig
from .model import ETAD, ETADPrediction

__all__ = ["CLASS_HEADS", "FEATURE_NORMS", "Detector", "FeatureStandardizer",
           "snippet_class_targets"]  # fmt: skip


class FeatureStandardizer(nn.Module):
    """Standardise features ``[B, N, C]`` per channel with running statistics.

    Snippet features of a from-scratch encoder carry a large constant offset and small
    differences between videos; standardising makes those differences visible to the heads.
    Unlike BatchNorm it normalises with the running statistics in training too (updated
    without grad), so a batch of one video is normalised exactly as at inference.
    """

    mean: torch.Tensor
    var: torch.Tensor
    initialised: torch.Tensor

    def __init__(self, channels: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                flat = feats.detach().float().reshape(-1, feats.shape[-1])
                mean, var = flat.mean(0), flat.var(0, unbiased=False)
                m = torch.where(self.initialised, torch.tensor(self.momentum), torch.tensor(1.0))
                self.mean.lerp_(mean, m)
                self.var.lerp_(var, m)
                self.initialised.fill_(True)
        return (feats - self.mean) * torch.rsqrt(self.var + 1e-5)


FEATURE_NORMS = ("running", "layer")
CLASS_HEADS = ("snippet", "attention", "mean")


def snippet_class_targets(
    segments: torch.Tensor, labels: torch.Tensor, num_snippets: int, background: int
) -> torch.Tensor:
    """Class of every snippet: the label of the instance covering its centre, else background.

    ``segments`` are ``[G, 2]`` fractions of the video, ``labels`` ``[G]``; returns ``[N]``.
    """
    centres = (torch.arange(num_snippets, device=segments.device) + 0.5) / num_snippets
    inside = (centres[:, None] >= segments[None, :, 0]) & (centres[:, None] < segments[None, :, 1])
    targets = torch.full((num_snippets,), background, dtype=torch.long, device=segments.device)
    covered = inside.any(1)
    if covered.any():  # overlapping instances: the first in the annotation wins
        targets[covered] = labels.to(segments.device)[inside[covered].float().argmax(1)]
    return targets


class Detector(nn.Module):
    """ETAD plus a classifier whose video-level scores label the class-agnostic proposals.

    ActivityNet detectors take video-level class scores from a separate classifier and fuse
    the top-2 classes with each proposal (App. A.4); here a small head trains with the
    detector and plays that part. ``class_head``:

    * ``"snippet"`` (default): every snippet is classified (the action classes plus
      background) by a small temporal convolution, against the label of the instance that
      covers it; the video's scores are the foreground class probabilities summed over its
      snippets. Dense supervision: each snippet's feature gets its own class gradient.
    * ``"attention"`` / ``"mean"``: one label per video, from learned attention pooling (or the
      mean) of the features over time, concatenated with their max.
    """

    def __init__(
        self,
        config: ETADConfig,
        num_classes: int,
        feature_norm: str = "running",
        class_head: str = "snippet",
    ) -> None:
        super().__init__()
        if class_head not in CLASS_HEADS:
            raise ValueError(f"class_head must be one of {CLASS_HEADS}; got {class_head!r}.")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}; got {feature_norm!r}.")
        c = config.in_channels
        self.num_classes = num_classes
        self.class_head = class_head
        self.norm: nn.Module = (
            FeatureStandardizer(c) if feature_norm == "running" else nn.LayerNorm(c)
        )
        self.etad = ETAD(config)
        self.attention = nn.Linear(c, 1) if class_head == "attention" else None
        if class_head == "snippet":
            self.classifier: nn.Module = nn.Sequential(
                nn.Conv1d(c, 128, 3, padding=1), nn.ReLU(), nn.Conv1d(128, num_classes + 1, 1)
            )
        else:
            self.classifier = nn.Sequential(
                nn.Linear(2 * c, 128), nn.ReLU(), nn.Linear(128, num_classes)
            )

    def _video_logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.attention is None:
            pooled = feats.mean(1)
        else:  # attention pooling (multiple-instance learning): weigh the action's snippets
            pooled = (self.attention(feats).softmax(dim=1) * feats).sum(1)
        return self.classifier(torch.cat([pooled, feats.amax(1)], dim=-1))

    def class_loss(
        self, feats: torch.Tensor, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> torch.Tensor:
        """Cross-entropy of the class head on normalised features ``[B, N, C]``.

        Every row counts: the main job resamples every video to the same ``N`` snippets, so
        there is no padding (with variable ``N``, mask the padded rows out of the loss).
        """
        if self.class_head != "snippet":
            video_labels = torch.stack([lab[0] for lab in labels]).to(feats.device)
            return nn.functional.cross_entropy(self._video_logits(feats), video_labels)
        n = feats.shape[1]
        targets = torch.stack(
            [
                snippet_class_targets(seg.to(feats.device), lab, n, self.num_classes)
                for seg, lab in zip(segments, labels)
            ]
        )
        logits = self.classifier(feats.transpose(1, 2))  # [B, K + 1, N]
        return nn.functional.cross_entropy(logits, targets)

    def forward(
        self,
        feats: torch.Tensor,
        segments: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training losses of a batch: ETAD's (with APS) and the class head's.

        Args:
            feats: Snippet features ``[B, T, C]`` (as the engine returns them).
            segments: ``B`` tensors ``[G_b, 2]`` of ground-truth segments, fractions of the
                video.
            labels: ``B`` tensors ``[G_b]`` of their class indices.
            generator: Generator for APS and the losses' random subsets (the trainer's
                ``info.generator``, so a resumed run draws what the uninterrupted one would).

        Returns:
            ETAD's loss terms, ``"cls_loss"``, and ``"loss"``, their sum to back-propagate.
        """
        gts = [s.to(feats.device) for s in segments]
        x = self.norm(feats.float())
        losses = self.etad(x.transpose(1, 2), gts, generator=generator)
        cls = self.class_loss(x, gts, list(labels))
        return {**losses, "cls_loss": cls, "loss": losses["loss"] + cls}

    @torch.no_grad()
    def predict(self, feats: torch.Tensor) -> tuple[list[ETADPrediction], torch.Tensor]:
        """Proposals of every video and its class scores ``[B, num_classes]``."""
        x = self.norm(feats.float())
        return self.etad.predict(x.transpose(1, 2)), self.class_probs(x)

    def class_probs(self, feats: torch.Tensor) -> torch.Tensor:
        """Video-level class scores ``[B, num_classes]``, summing to 1, of ``[B, N, C]``."""
        if self.class_head != "snippet":
            return self._video_logits(feats).softmax(-1)
        probs = self.classifier(feats.transpose(1, 2)).softmax(1)[:, : self.num_classes]
        scores = probs.sum(-1)
        return scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)
