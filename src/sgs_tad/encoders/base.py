"""What every snippet encoder in :mod:`sgs_tad.encoders` shares: input checks and stage names.

An encoder maps a batch of M snippets ``[M, 3, L, H, W]`` (channels, frames, height, width) to
one feature vector per snippet, ``[M, C]``: the feature map before the classification head,
averaged over time and space (paper §3.1). Each snippet is encoded independently of the others
in the batch, so the SGS engine can split the M snippets into micro-batches of any size and get
the same features, provided no normalisation layer mixes samples (see :mod:`sgs_tad.engine.norm`).

Stages are numbered like mmaction2's ``frozen_stages`` (which the ETAD configs use): stage 0 is
the stem, stages 1..4 are the residual stages ``layer1``..``layer4``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VideoEncoder"]


class VideoEncoder(nn.Module):
    """Base class of the snippet encoders: ``[M, 3, L, H, W] -> [M, out_channels]``.

    Subclasses set :attr:`out_channels`, :attr:`stem_names` (qualified names of the stem's
    submodules) and :attr:`stage_names` (one name per residual stage), and implement
    :meth:`forward_features`.
    """

    out_channels: int
    stem_names: tuple[str, ...]
    stage_names: tuple[str, ...]
    #: Smallest frame count per snippet the architecture accepts.
    min_frames: int = 1

    def stage_prefixes(self, frozen_stages: int) -> list[str]:
        """Qualified submodule names covered by the first ``frozen_stages`` stages.

        Args:
            frozen_stages: As mmaction2's ``frozen_stages``: -1 names nothing, 0 the stem only,
                k >= 1 the stem and residual stages 1..k. The paper (§4.1) and the ETAD configs
                use 2.

        Returns:
            Names to pass to :func:`sgs_tad.engine.norm.freeze_stages`.
        """
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
            raise TypeError(
                f"frozen_stages must be an int in [-1, {len(self.stage_names)}], "
                f"got {frozen_stages!r}."
            )
        if not -1 <= frozen_stages <= len(self.stage_names):
            raise ValueError(
                f"frozen_stages={frozen_stages} is out of range for {type(self).__name__}: use "
                f"-1 (nothing), 0 (stem only) or 1..{len(self.stage_names)} (stem and that many "
                "residual stages)."
            )
        if frozen_stages < 0:
            return []
        return [*self.stem_names, *self.stage_names[:frozen_stages]]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is a float tensor ``[M, 3, L, H, W]``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__} expects a tensor [M, 3, L, H, W], got {type(x).__name__}."
            )
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects snippets [M, 3, L, H, W] (channels before frames),"
                f" got shape {tuple(x.shape)}. For [M, L, 3, H, W] input pass "
                "x.transpose(1, 2)."
            )
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects floating-point pixels, got {x.dtype}; convert "
                "and normalise first, e.g. x.float() / 255."
            )
        if x.shape[2] < self.min_frames:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_frames} frames per snippet, "
                f"got L={x.shape[2]} (shape {tuple(x.shape)})."
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Map checked snippets ``[M, 3, L, H, W]`` to features ``[M, out_channels]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode snippets.

        Args:
            x: Snippets ``[M, 3, L, H, W]``, any M >= 0.

        Returns:
            Features ``[M, out_channels]``, averaged over time and space.
        """
        self.check_input(x)
        if x.shape[0] == 0:
            return x.new_zeros((0, self.out_channels))
        return self.forward_features(x)
