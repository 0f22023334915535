"""VideoMAE (Tong et al., NeurIPS 2022) and VideoMAEv2 ViTs as snippet encoders.

A plain ViT over tubelets: a ``Conv3d`` with kernel and stride ``(tubelet_size, patch_size,
patch_size)`` cuts each snippet into tokens, a fixed sinusoid table gives their positions, and
``depth`` pre-norm blocks (attention with a query and a value bias but no key bias, then a GELU
MLP) transform them. The snippet feature is the mean over tokens followed by ``fc_norm``
(``use_mean_pooling=True``, the fine-tuned checkpoints), or the final ``norm`` followed by the
mean (``use_mean_pooling=False``, the self-supervised checkpoints, whose encoder has a final norm
and no ``fc_norm``): ``[M, 3, L, H, W] -> [M, embed_dim]``.

Tokens attend only within their own snippet, so the encoder is snippet-independent and SGS is
exact with it. Submodule names follow VideoMAE's code (``patch_embed.proj``,
``blocks.N.attn.qkv``, ``blocks.N.attn.q_bias``, ``blocks.N.mlp.fc1`` ...), so the original
checkpoints load as they are; :mod:`sgs_tad.encoders.checkpoints` converts mmaction2 / OpenTAD
and Hugging Face files.

The position table is built for ``num_frames`` frames of ``image_size`` pixels (the pretraining
size) and re-sampled at every call to the input's token grid: bicubically per time step in space
(as OpenTAD and mmaction2 do to run 224-pretrained weights at 160 px) and linearly in time. A
frame size that is not a multiple of ``patch_size`` loses its last ``H % patch_size`` rows and
columns, as in those codebases (VideoMAEv2-g, patch 14, at 160 px uses 154 px).

Input: snippets normalised like the other encoders of this package (pixels in [0, 1] minus the
ImageNet mean, divided by its std: the same statistics VideoMAE uses on 0-255 values).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sgs_tad.encoders.base import VideoEncoder

__all__ = ["VIDEOMAE_PRESETS", "VideoMAE", "sinusoid_table"]

#: Sizes of the public models: ``embed_dim``, ``depth``, ``num_heads`` (and the others that
#: differ from the defaults). ``g`` is VideoMAEv2's giant; ``tiny`` is for CPU tests and runs.
VIDEOMAE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "patch_size": 8,
        "num_frames": 4,
        "image_size": 32,
    },
    "s": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "b": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "l": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "h": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
    "g": {"embed_dim": 1408, "depth": 40, "num_heads": 16, "mlp_ratio": 48 / 11, "patch_size": 14},
}


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed position table over the flattened token index.

    Position p and channel j get ``sin(p / 10000 ** (2 * (j // 2) / dim))`` for even j and the
    cosine of the same angle for odd j. Computed in float64.

    Returns:
        ``[num_positions, dim]``, float64.
    """
    pos = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor").double() / dim
    angles = pos / torch.pow(10000.0, exponent)
    table = angles.clone()
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of the samples."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        # One draw per sample from the global generator, which SGS replays in phase 3.
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class _PatchEmbed(nn.Module):
    """Tubelets to tokens (VideoMAE names it ``patch_embed.proj``)."""

    def __init__(self, dim: int, patch_size: int, tubelet_size: int) -> None:
        super().__init__()
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=size, stride=size)


class _Attention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool, attn_drop: float, proj_drop: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias: nn.Parameter | None = None
        self.v_bias: nn.Parameter | None = None
        if qkv_bias:
            # VideoMAE learns query and value biases only; the key bias is fixed at zero.
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        # A module, not a float, so that eval() (and sgs_tad's independence check, which puts
        # dropout modules in eval mode) turns the attention dropout off.
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x)  # through the module, so a LoRA wrapper around qkv is applied
        if self.q_bias is not None and self.v_bias is not None:
            qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop.p if self.attn_drop.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, c)))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class _Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
        init_values: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)
        self.gamma_1: nn.Parameter | None = None
        self.gamma_2: nn.Parameter | None = None
        if init_values > 0:  # layer scale, as VideoMAE's ``init_values``
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + self.drop_path(a if self.gamma_1 is None else a * self.gamma_1)
        m = self.mlp(self.norm2(x))
        return x + self.drop_path(m if self.gamma_2 is None else m * self.gamma_2)


class VideoMAE(VideoEncoder):
    """VideoMAE / VideoMAEv2 ViT snippet encoder: ``[M, 3, L, H, W] -> [M, embed_dim]``.

    The defaults are ViT-B (VideoMAE-B, 16 frames at 224 px); ``build_encoder("videomae_s")``
    etc. give the other public sizes (:data:`VIDEOMAE_PRESETS`).

    Args:
        embed_dim: Token width, and the feature size C.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width over ``embed_dim`` (4; VideoMAEv2-g 48/11).
        patch_size: Spatial side of a tubelet, in pixels.
        tubelet_size: Frames per tubelet; L must be a multiple of it.
        num_frames: Frames of the pretraining clips (the native size of the position table).
        image_size: Frame side of the pretraining clips (idem).
        qkv_bias: Learn a query and a value bias (VideoMAE does; there is never a key bias).
        drop_rate: Dropout after the attention projection and in the MLP.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, rising linearly from 0 at the first block to this
            value at the last.
        init_values: Layer scale initial value; 0 (VideoMAE's default) means no layer scale.
        use_mean_pooling: True: mean over tokens, then ``fc_norm`` (fine-tuned checkpoints).
            False: final ``norm`` on the tokens, then the mean (self-supervised checkpoints).
        checkpoint_blocks: Recompute each block's activations during the backward instead of
            keeping them (per-block activation checkpointing inside a snippet, OpenTAD's and
            VideoMAEv2's ``with_cp``). Exact, including under SGS: the RNG state is restored
            for the recomputation, so dropout and drop-path masks are the same.

    Example:
        >>> enc = VideoMAE(embed_dim=32, depth=2, num_heads=2, patch_size=8, num_frames=4,
        ...                image_size=32)
        >>> enc(torch.randn(3, 3, 4, 32, 32)).shape
        torch.Size([3, 32])
        >>> enc(torch.randn(1, 3, 8, 48, 40)).shape  # position table re-sampled to 4 x 6 x 5
        torch.Size([1, 32])
    """

    stem_names = ("patch_embed",)

    def __init__(
        self,
        *,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        tubelet_size: int = 2,
        num_frames: int = 16,
        image_size: int = 224,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float = 0.0,
        use_mean_pooling: bool = True,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
            ("patch_size", patch_size),
            ("tubelet_size", tubelet_size),
            ("num_frames", num_frames),
            ("image_size", image_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoMAE: {name} must be an int >= 1, got {value!r}.")
        if embed_dim % num_heads:
            raise ValueError(
                f"VideoMAE: embed_dim={embed_dim} is not divisible by num_heads={num_heads}."
            )
        if num_frames % tubelet_size or image_size < patch_size:
            raise ValueError(
                f"VideoMAE: num_frames={num_frames} must be a multiple of tubelet_size="
                f"{tubelet_size} and image_size={image_size} at least patch_size={patch_size}."
            )
        for name, rate in (
            ("drop_rate", drop_rate),
            ("attn_drop_rate", attn_drop_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"VideoMAE: {name} must be in [0, 1), got {rate!r}.")
        self.out_channels = embed_dim
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.min_frames = tubelet_size
        self.checkpoint_blocks = checkpoint_blocks
        self.stage_names = tuple(f"blocks.{i}" for i in range(depth))
        # The grid the position table is defined on: [T0, G0, G0] tokens.
        side = image_size // patch_size
        self.grid = (num_frames // tubelet_size, side, side)

        self.patch_embed = _PatchEmbed(embed_dim, patch_size, tubelet_size)
        # Fixed, not learned: non-persistent, so it is neither saved nor expected in checkpoints.
        table = sinusoid_table(math.prod(self.grid), embed_dim)
        self.pos_embed: torch.Tensor
        self.register_buffer("pos_embed", table.to(torch.get_default_dtype()), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        # Plain floats (not torch.linspace) so that building on the meta device works.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            _Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=rate,
                init_values=init_values,
            )
            for rate in rates
        )
        self.norm: nn.LayerNorm | None = None
        self.fc_norm: nn.LayerNorm | None = None
        if use_mean_pooling:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # VideoMAE's initialisation: truncated normal (std 0.02) linears, unit LayerNorms.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def position_table(
        self, grid: tuple[int, int, int], *, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The position table re-sampled to a token grid ``(t, h, w)``.

        Returns:
            ``[t * h * w, embed_dim]``; the stored table itself when the grid is the native one.
        """
        table = self.pos_embed if dtype is None else self.pos_embed.to(dtype)
        if tuple(grid) == self.grid:
            return table
        t0, h0, w0 = self.grid
        t, h, w = grid
        with torch.no_grad():
            # [T0, D, H0, W0]: bicubic in space per time step, as OpenTAD / mmaction2 do.
            x = table.view(t0, h0, w0, -1).permute(0, 3, 1, 2)
            if (h, w) != (h0, w0):
                x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
            if t != t0:
                # [1, D * h * w, T0] -> linear in time.
                flat = x.permute(1, 2, 3, 0).reshape(1, -1, t0)
                flat = F.interpolate(flat, size=t, mode="linear", align_corners=False)
                x = flat.view(-1, h, w, t).permute(3, 0, 1, 2)
            return x.permute(0, 2, 3, 1).reshape(t * h * w, -1)

    def _check_grid(self, x: torch.Tensor) -> None:
        if x.shape[2] % self.tubelet_size:
            raise ValueError(
                f"VideoMAE needs a frame count divisible by tubelet_size={self.tubelet_size}, "
                f"got L={x.shape[2]} (shape {tuple(x.shape)})."
            )
        if min(x.shape[3:]) < self.patch_size:
            raise ValueError(
                f"VideoMAE needs frames of at least patch_size={self.patch_size} pixels, got "
                f"{tuple(x.shape[3:])}."
            )

    def run_stage(self, index: int, y: torch.Tensor) -> torch.Tensor:
        if index == 0:  # the patch embedding, positions and their dropout: [M, t*h*w, D]
            self._check_grid(y)
            tokens = self.patch_embed.proj(y)  # [M, D, t, h, w]
            grid = (tokens.shape[2], tokens.shape[3], tokens.shape[4])
            tokens = tokens.flatten(2).transpose(1, 2)  # [M, t*h*w, D], time-major as the table
            return self.pos_drop(tokens + self.position_table(grid, dtype=tokens.dtype))
        block = self.blocks[index - 1]
        if self.checkpoint_blocks and torch.is_grad_enabled():
            # Keeps only the block's input; the forward is rerun in the backward with the
            # RNG state of this call, so dropout / drop-path masks match.
            return checkpoint(block, y, use_reentrant=False)
        return block(y)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            tokens = self.norm(tokens)
        feats = tokens.mean(dim=1)
        return feats if self.fc_norm is None else self.fc_norm(feats)
