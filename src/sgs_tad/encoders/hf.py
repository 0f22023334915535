"""Any Hugging Face ``transformers`` video backbone as a snippet encoder.

:class:`HFVideoEncoder` wraps a ``VideoMAEModel``, ``TimesformerModel``, ``VivitModel`` or
``VJEPA2Model`` (random or pretrained; a ``...ForVideoClassification`` is reduced to its
backbone): it turns snippets ``[M, 3, L, H, W]`` into the model's ``pixel_values``
``[M, L, 3, H, W]``, runs it, and pools its last hidden states to ``[M, hidden_size]``: the mean
over the patch tokens (the CLS token left out where the model has one), or the CLS token.

These models attend within one clip, so one snippet's feature depends on that snippet only, and
SGS is exact with them (attention dropout in these models is drawn from the global RNG, which SGS
replays). They cannot change their frame count, and all but TimeSformer not their frame size
either: their position embeddings are fixed to the config's (``num_frames`` / ``image_size``;
V-JEPA 2: ``frames_per_clip`` / ``crop_size``). The wrapper says so before the model fails.
For VideoMAE checkpoints at another size, load them into :class:`~sgs_tad.encoders.VideoMAE`
instead (``build_encoder("videomae_b", weights=...)``), which re-samples its position table.

``transformers`` is needed only to build the model you pass in (``pip install sgs_tad[hf]``).

Example:
    >>> from transformers import VideoMAEConfig, VideoMAEModel
    >>> cfg = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=64,
    ...                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    >>> enc = HFVideoEncoder(VideoMAEModel(cfg))
    >>> enc(torch.randn(2, 3, 4, 32, 32)).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from sgs_tad.encoders.base import VideoEncoder

__all__ = ["HF_MODELS", "HFVideoEncoder"]


@dataclass(frozen=True)
class _Spec:
    input_name: str  # the forward's keyword for the video
    frames_attr: str  # config attribute: frames per clip
    size_attr: str  # config attribute: frame side
    cls_token: bool  # token 0 is a CLS token
    resizable: bool  # the model re-samples its spatial position embeddings to any frame size
    extra: tuple[tuple[str, Any], ...] = ()  # further forward keywords


#: ``config.model_type`` of the supported backbones, and how each is called.
HF_MODELS: dict[str, _Spec] = {
    "videomae": _Spec("pixel_values", "num_frames", "image_size", False, False),
    "vivit": _Spec("pixel_values", "num_frames", "image_size", True, False),
    "timesformer": _Spec("pixel_values", "num_frames", "image_size", True, True),
    "vjepa2": _Spec(
        "pixel_values_videos",
        "frames_per_clip",
        "crop_size",
        False,
        False,
        (("skip_predictor", True),),
    ),
}


def _side(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class HFVideoEncoder(VideoEncoder):
    """A ``transformers`` video backbone as a snippet encoder: ``[M, 3, L, H, W] ->
    [M, hidden_size]``.

    Args:
        model: The backbone (``VideoMAEModel``, ``TimesformerModel``, ``VivitModel``,
            ``VJEPA2Model``), or a model with such a ``base_model``. Its train/eval mode is
            left as it is.
        pool: "mean" (mean over the patch tokens) or "cls" (the CLS token of TimeSformer /
            ViViT).

    Raises:
        ValueError: For a model type not in :data:`HF_MODELS`, or ``pool="cls"`` on a model
            without a CLS token.
    """

    def __init__(self, model: nn.Module, *, pool: Literal["mean", "cls"] = "mean") -> None:
        super().__init__()
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in HF_MODELS:
            raise ValueError(
                f"HFVideoEncoder supports transformers models of type {sorted(HF_MODELS)}; got "
                f"{type(model).__name__} (model_type={model_type!r})."
            )
        base = getattr(model, "base_model", model)
        self.model = base if isinstance(base, nn.Module) else model
        self.spec = HF_MODELS[model_type]
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}.")
        if pool == "cls" and not self.spec.cls_token:
            raise ValueError(f"pool='cls': {model_type} has no CLS token; use pool='mean'.")
        self.pool = pool
        self.model_type = model_type
        self.out_channels = int(config.hidden_size)  # type: ignore[union-attr]
        self.frames = int(getattr(config, self.spec.frames_attr))
        self.size = _side(getattr(config, self.spec.size_attr))
        tubelet = getattr(config, "tubelet_size", 1)
        self.min_frames = int(tubelet[0] if isinstance(tubelet, (tuple, list)) else tubelet)
        names = dict(self.model.named_modules())
        self.stem_names = tuple(
            f"model.{n}" for n in ("embeddings", "encoder.embeddings") if n in names
        )
        # The transformer blocks: the longest ModuleList outside V-JEPA 2's predictor
        # ("encoder.layer" in VideoMAE / TimeSformer / V-JEPA 2, "layers" in ViViT).
        lists = [
            (len(m), -len(n), n)
            for n, m in names.items()
            if isinstance(m, nn.ModuleList) and not n.startswith("predictor")
        ]
        blocks = max(lists)[2] if lists else ""
        layers = [f"{blocks}.{i}" for i in range(len(names[blocks]))] if blocks else []
        self.stage_names = tuple(f"model.{n}" for n in layers)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, pool: Literal["mean", "cls"] = "mean", **kwargs: Any
    ) -> HFVideoEncoder:
        """Load a backbone with ``transformers.AutoModel.from_pretrained`` and wrap it.

        Args:
            path: A local directory written by ``save_pretrained`` (or a Hub name, which
                ``transformers`` downloads).
            pool: As in the constructor.
            **kwargs: Passed to ``AutoModel.from_pretrained``.
        """
        try:
            from transformers import AutoModel
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "HFVideoEncoder.from_pretrained needs transformers: pip install 'sgs_tad[hf]'."
            ) from err
        return cls(AutoModel.from_pretrained(path, **kwargs), pool=pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        frames, height, width = x.shape[2:]
        size_ok = self.spec.resizable or (height, width) == self.size
        if frames != self.frames or not size_ok:
            raise ValueError(
                f"{type(self.model).__name__} ({self.model_type}) only accepts snippets of "
                f"{self.frames} frames"
                + ("" if self.spec.resizable else f" of {self.size[0]}x{self.size[1]} pixels")
                + f" (its config's {self.spec.frames_attr}"
                + ("" if self.spec.resizable else f" and {self.spec.size_attr}")
                + f": its position embeddings are fixed to them); got {frames} frames of "
                f"{height}x{width}. Resize the "
                "snippets, or build the model with a config of that size"
                + (
                    ", or load the checkpoint into sgs_tad.encoders.VideoMAE, which re-samples "
                    "its position table."
                    if self.model_type == "videomae"
                    else "."
                )
            )
        # [M, 3, L, H, W] -> pixel_values [M, L, 3, H, W]
        out = self.model(**{self.spec.input_name: x.transpose(1, 2)}, **dict(self.spec.extra))
        tokens = out.last_hidden_state  # [M, tokens, hidden]
        if self.pool == "cls":
            return tokens[:, 0]
        return (tokens[:, 1:] if self.spec.cls_token else tokens).mean(dim=1)
