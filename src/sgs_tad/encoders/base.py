"""What every snippet encoder in :mod:`sgs_tad.encoders` shares: input checks and stage names.

An encoder maps a batch of M snippets ``[M, 3, L, H, W]`` (channels, frames, height, width) to
one feature vector per snippet, ``[M, C]``: the feature map before the classification head,
averaged over time and space (paper §3.1). Each snippet is encoded independently of the others
in the batch, so the SGS engine can split the M snippets into micro-batches of any size and get
the same features, provided no normalisation layer mixes samples (see :mod:`sgs_tad.engine.norm`).

Stages are numbered like mmaction2's ``frozen_stages`` (which the ETAD configs use): stage 0 is
the stem, stages 1..4 are the residual stages ``layer1``..``layer4``.

Input normalisation is the encoder's explicit step: ``uint8`` pixels (from a source built with
``dtype="uint8"``) are converted and normalised on the encoder's device, after the copy, by
:meth:`VideoEncoder.normalise_input` with the statistics of
:meth:`VideoEncoder.set_input_normalisation` (ImageNet's by default). Floating-point input is
taken as already normalised and passed through untouched.

Example:
    >>> import torch
    >>> from sgs_tad.encoders import Small3DCNN
    >>> enc = Small3DCNN(widths=(8, 8, 8, 8)).eval()
    >>> pixels = torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8)
    >>> same = enc(pixels) - enc(enc.normalise_input(pixels))
    >>> bool(same.abs().max() == 0)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sgs_tad.engine.pixels import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_normalisation,
    normalise_pixels,
)

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
    #: Per-channel mean and standard deviation of pixels in ``[0, 1]`` that ``uint8`` input is
    #: normalised with (see :meth:`set_input_normalisation`).
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD

    def set_input_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise ``uint8`` input with ``mean`` and ``std`` (use the data set's values).

        Raises:
            ValueError: unless 3 finite means and 3 finite standard deviations > 0.
        """
        check_normalisation(mean, std)
        self.input_mean = (float(mean[0]), float(mean[1]), float(mean[2]))
        self.input_std = (float(std[0]), float(std[1]), float(std[2]))
        self.__dict__.pop("_input_stats", None)

    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        """``uint8`` pixels to normalised ``float32`` on ``x``'s device; float input as it is.

        The same arithmetic as a ``float32`` :class:`~sgs_tad.data.MediaSnippetSource`
        (:func:`~sgs_tad.engine.pixels.normalise_pixels`), so both give the same features.
        """
        if x.dtype != torch.uint8:
            return x
        # The statistics live on the device once (a copy per call would be a host sync each).
        cache: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]]
        cache = self.__dict__.setdefault("_input_stats", {})
        key = (x.device, x.dim())
        if key not in cache:
            shape = (1, 3, *([1] * (x.dim() - 2)))
            cache[key] = (
                torch.tensor(self.input_mean, dtype=torch.float32).view(shape).to(x.device),
                torch.tensor(self.input_std, dtype=torch.float32).view(shape).to(x.device),
            )
        mean, std = cache[key]
        return normalise_pixels(x, mean, std)

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
        """Raise a clear error unless ``x`` is a float or uint8 tensor ``[M, 3, L, H, W]``."""
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
        if not x.is_floating_point() and x.dtype != torch.uint8:
            raise TypeError(
                f"{type(self).__name__} expects uint8 pixels (normalised by the encoder) or "
                f"normalised floating-point snippets, got {x.dtype}; convert to uint8, or "
                "normalise yourself, e.g. (x.float() / 255 - mean) / std."
            )
        if x.shape[2] < self.min_frames:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_frames} frames per snippet, "
                f"got L={x.shape[2]} (shape {tuple(x.shape)})."
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map checked snippets ``[M, 3, L, H, W]`` to features ``[M, out_channels]``.

        The stages one after the other (:meth:`run_stage`), then :meth:`head`; a subclass may
        instead override this alone (it then has no frozen prefix to offer the engine).
        """
        return self.forward_suffix(x, 0)

    # ------------------------------------------------------------------ stages one by one
    #
    # SGS's phase 3 re-runs the sampled snippets with grad, but the leading stages without a
    # trainable parameter (the paper freezes TSM's stem and first stages) need no gradient:
    # the engine keeps their phase-1 output for the sampled snippets and re-runs only the
    # stages after it (sgs_tad.engine.prefix). Stage 0 is the stem, stage i >= 1 is
    # stage_names[i - 1], as frozen_stages counts.

    @property
    def num_stages(self) -> int:
        """The stem and the residual stages (or blocks)."""
        return 1 + len(self.stage_names)

    def run_stage(self, index: int, y: torch.Tensor) -> torch.Tensor:
        """Stage ``index`` (0: the stem, on normalised input): ``[M, ...] -> [M, ...]``.

        Every intermediate keeps one row per snippet, so that rows can be kept and batched
        again. Subclasses implement it together with :meth:`head`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not run stage by stage")

    def head(self, y: torch.Tensor) -> torch.Tensor:
        """The last stage's output ``[M, ...]`` to features ``[M, out_channels]``."""
        raise NotImplementedError(f"{type(self).__name__} does not run stage by stage")

    def frozen_prefix_stages(self) -> int:
        """How many leading stages have no trainable parameter (0: the stem trains).

        0 as well for an encoder that does not run stage by stage. Only the stages' own
        modules (:attr:`stem_names`, :attr:`stage_names`) are looked at: a subclass whose
        stages use a parameter held elsewhere must override this.
        """
        if type(self).run_stage is VideoEncoder.run_stage:
            return 0
        count = 0
        for names in (self.stem_names, *((n,) for n in self.stage_names)):
            if any(p.requires_grad for n in names for p in self.get_submodule(n).parameters()):
                break
            count += 1
        return min(count, self.num_stages - 1)  # (a fully frozen encoder has no suffix)

    def _check_split(self, stages: object) -> None:
        if isinstance(stages, bool) or not isinstance(stages, int):
            raise TypeError(f"stages must be an int (a stage count), got {stages!r}.")
        if not 0 <= stages < self.num_stages:
            raise ValueError(
                f"stages={stages} is out of range for {type(self).__name__}: the split must "
                f"leave at least one stage after it, 0 <= stages <= {self.num_stages - 1} "
                "(frozen_prefix_stages() gives the frozen ones)."
            )

    def forward_prefix(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        """Snippets ``[M, 3, L, H, W]`` (checked and normalised here) through stages
        ``0 .. stages - 1``: one row per snippet, the input of :meth:`forward_suffix`."""
        self._check_split(stages)
        self.check_input(x)
        y = self.normalise_input(x)
        for i in range(stages):
            y = self.run_stage(i, y)
        return y

    def forward_suffix(self, y: torch.Tensor, stages: int) -> torch.Tensor:
        """Stages ``stages ..`` and the head on :meth:`forward_prefix`'s output:
        ``forward_suffix(forward_prefix(x, s), s)`` is ``forward(x)`` for every ``s``."""
        self._check_split(stages)
        for i in range(stages, self.num_stages):
            y = self.run_stage(i, y)
        return self.head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode snippets.

        Args:
            x: Snippets ``[M, 3, L, H, W]``, any M >= 0: normalised floats, or ``uint8``
                pixels that :meth:`normalise_input` converts here, on the device.

        Returns:
            Features ``[M, out_channels]``, averaged over time and space.
        """
        self.check_input(x)
        if x.shape[0] == 0:
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return x.new_zeros((0, self.out_channels), dtype=dtype)
        return self.forward_features(self.normalise_input(x))
