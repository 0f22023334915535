"""Pretrain a small encoder as a clip classifier, as Kinetics pretraining is for the paper.

The paper fine-tunes encoders pretrained on Kinetics-400 (TSM) at a small learning rate. This
script gives the main job (``examples/etad_anet.py``) the same starting point: it generates (or
reuses) the synthetic trimmed-clip set of :func:`sgs_tad.data.synthetic.generate_synthetic_clips`
(other look, other backgrounds and related but different motions than the detection set, no
untrimmed timing), trains the encoder (``small3d``, or the ViTs ``videomae_tiny`` and
``videomae_s``: :data:`PRETRAINABLE`) plus a linear head to classify its clips from one random
snippet each (``--snippet-length`` frames, a random crop resized to ``--size`` px: the main
job's input), and writes the encoder checkpoint that ``build_encoder(..., weights=PATH)`` and
``etad_anet.py --weights PATH`` load::

    python examples/pretrain_encoder.py                       # data/pretrain/small3d.pt
    python examples/etad_anet.py --weights data/pretrain/small3d.pt
    python examples/pretrain_encoder.py --encoder videomae_tiny   # a few minutes on one core

``videomae_s`` (22 M parameters) pretrains too, but slowly on a CPU: at the main job's ViT
snippets (8 frames at 48 px) one epoch takes minutes, see ``docs/encoders.md``.

The checkpoint holds ``{"state_dict": encoder weights, "head": classifier weights, "meta":
settings, fingerprint, accuracy}``; :func:`sgs_tad.encoders.read_state_dict` takes its
``"state_dict"``. It is cached: when the file exists with the same settings fingerprint, nothing
is trained (``--force`` retrains). It is written to a temporary name and renamed, so an
interrupted run never leaves a file that looks complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgs_tad.data.snippets import draw_crop
from sgs_tad.data.synthetic import generate_synthetic_clips, read_synthetic_clips
from sgs_tad.encoders import build_encoder

log = logging.getLogger("pretrain_encoder")

#: Encoders this script pretrains (and ``etad_anet.py --pretrained auto`` with them): the small
#: 3D CNN and the ViTs small enough for a CPU (``videomae_s`` takes minutes per epoch).
PRETRAINABLE = ("small3d", "videomae_tiny", "videomae_s")
#: The settings of an encoder's recipe that differ from :class:`PretrainConfig`'s defaults (those
#: of small3d). A ViT from scratch stays at chance for about ten epochs at small3d's 2e-3 and
#: reaches 41 % held-out accuracy in 20; at 1e-3 over 60 epochs videomae_tiny reaches 69 %.
RECIPES: dict[str, dict[str, Any]] = {
    "videomae_tiny": {"epochs": 60, "lr": 1e-3},
    "videomae_s": {"epochs": 60, "lr": 1e-3},
}

#: Bumped whenever the training recipe changes, so cached checkpoints are retrained.
RECIPE_VERSION = 1
#: Normalisation of the main job: pixels in [0, 1], then (x - 0.5) / 0.25.
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines the pretrained checkpoint (its fingerprint is stored in it).

    Attributes:
        data_root: Folder of the clip set (written there if missing).
        num_clips: Clips in the set (10 % of them held out for the accuracy).
        data_seed: Seed of the clip set.
        encoder: Encoder name, one of :data:`PRETRAINABLE`.
        snippet_length: Frames per training snippet (the main job's ``--snippet-length``).
        size: Crop size in pixels after resizing (the main job's ``--size``).
        epochs: Passes over the training clips (one random snippet of each per pass; the
            defaults here are small3d's, :func:`recipe` gives each encoder's).
        batch_size: Clips per step.
        lr: Peak AdamW learning rate (one epoch of warm-up, then cosine to 0).
        weight_decay: AdamW weight decay.
        seed: Seed of the initialisation and of the snippet, crop and batch draws.
    """

    data_root: str = "data/pretrain"
    num_clips: int = 1400
    data_seed: int = 0
    encoder: str = "small3d"
    snippet_length: int = 4
    size: int = 32
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def fingerprint(self) -> str:
        """Hash of the recipe version and every setting but the data folder's name."""
        settings = {k: v for k, v in asdict(self).items() if k != "data_root"}
        blob = json.dumps({"recipe": RECIPE_VERSION, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def recipe(encoder: str, **settings: Any) -> PretrainConfig:
    """The recipe of ``encoder``: :data:`RECIPES` over the defaults, then ``settings``."""
    return PretrainConfig(encoder=encoder, **{**RECIPES.get(encoder, {}), **settings})


def default_checkpoint(config: PretrainConfig) -> Path:
    """Where the checkpoint of ``config`` is cached: ``<data_root>/<encoder>.pt``."""
    return Path(config.data_root) / f"{config.encoder}.pt"


def cached_meta(path: Path, config: PretrainConfig) -> dict[str, Any] | None:
    """The ``meta`` of the checkpoint at ``path`` if it was trained with ``config``, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = state["meta"]
        return dict(meta) if meta["fingerprint"] == config.fingerprint() else None
    except Exception:  # damaged, not ours, or an older layout: train again
        return None


def _snippets(
    frames: np.ndarray,
    index: np.ndarray,
    *,
    length: int,
    size: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One snippet per clip of ``index``: ``float32 [B, 3, length, size, size]``, normalised.

    Training (a ``generator``): a random window and a random crop (80-100 % of the side, as the
    main job's training crops). Evaluation (None): the middle window, the whole frame.
    """
    out = []
    num_frames, h0, w0 = frames.shape[1:4]
    for i in index:
        if generator is None:
            t0 = (num_frames - length) // 2
            box = draw_crop((h0, w0), (size, size), mode="center")
        else:
            t0 = int(torch.randint(0, num_frames - length + 1, (), generator=generator))
            box = draw_crop((h0, w0), (size, size), mode="random", generator=generator)
        clip = frames[i, t0 : t0 + length, box.top : box.top + box.height,
                      box.left : box.left + box.width]  # fmt: skip
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float().div_(255.0)
        if (box.height, box.width) != (size, size):
            down = box.height > size or box.width > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=down)  # fmt: skip
        out.append(((x - MEAN) / STD).transpose(0, 1))
    return torch.stack(out)


@torch.no_grad()
def accuracy(
    encoder: nn.Module,
    head: nn.Module,
    frames: np.ndarray,
    labels: np.ndarray,
    cfg: PretrainConfig,
) -> float:
    """Top-1 accuracy on the clips (middle snippet, whole frame); NaN when there are none."""
    if len(labels) == 0:
        return math.nan
    encoder.eval()
    correct = 0
    for start in range(0, len(labels), 64):
        idx = np.arange(start, min(start + 64, len(labels)))
        x = _snippets(frames, idx, length=cfg.snippet_length, size=cfg.size, generator=None)
        correct += int((head(encoder(x)).argmax(1).numpy() == labels[idx]).sum())
    encoder.train()
    return correct / len(labels)


def pretrain_encoder(
    config: PretrainConfig, output: str | os.PathLike[str] | None = None, *, force: bool = False
) -> Path:
    """Train (or reuse) the clip-classifier encoder of ``config`` and write its checkpoint.

    Args:
        config: The recipe.
        output: Checkpoint path (default :func:`default_checkpoint`).
        force: Train even if a checkpoint with the same fingerprint exists.

    Returns:
        The checkpoint's path; ``build_encoder(config.encoder, weights=path)`` loads it.
    """
    path = Path(output) if output is not None else default_checkpoint(config)
    if not force and (meta := cached_meta(path, config)) is not None:
        log.info("reusing pretrained encoder %s (held-out accuracy %.3f)", path,
                 meta.get("val_accuracy", math.nan))  # fmt: skip
        return path
    if config.encoder not in PRETRAINABLE:
        raise ValueError(
            f"PretrainConfig.encoder {config.encoder!r} cannot be pretrained here; use one of "
            f"{list(PRETRAINABLE)} (larger encoders: load a public checkpoint with --weights)."
        )
    for name in ("epochs", "batch_size", "num_clips", "snippet_length", "size"):
        if getattr(config, name) < 1:
            raise ValueError(f"PretrainConfig.{name} must be >= 1; got {getattr(config, name)}.")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"PretrainConfig.lr must be a positive number; got {config.lr}.")
    t0 = time.perf_counter()
    ann = generate_synthetic_clips(config.data_root, num_clips=config.num_clips,
                                   seed=config.data_seed)  # fmt: skip
    frames, labels, subsets, classes = read_synthetic_clips(ann)
    if frames.shape[1] < config.snippet_length:
        raise ValueError(
            f"the clips have {frames.shape[1]} frames, fewer than snippet_length = "
            f"{config.snippet_length}; lower snippet_length or regenerate longer clips."
        )
    is_val = np.array([s == "validation" for s in subsets])
    train_idx = np.flatnonzero(~is_val)
    t_data = time.perf_counter() - t0
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    encoder = build_encoder(config.encoder)  # type: ignore[arg-type]
    head = nn.Linear(encoder.out_channels, len(classes))
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total = config.epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < steps_per_epoch:
            return (step + 1) / steps_per_epoch
        return 0.5 * (
            1 + math.cos(math.pi * (step - steps_per_epoch) / max(1, total - steps_per_epoch))
        )

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    encoder.train()
    step = 0
    for epoch in range(config.epochs):
        t_epoch = time.perf_counter()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        losses = []
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            x = _snippets(frames, idx, length=config.snippet_length, size=config.size,
                          generator=gen)  # fmt: skip
            loss = F.cross_entropy(head(encoder(x)), torch.from_numpy(labels[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
        log.info("pretraining epoch %d/%d: loss %.3f (%.0f s)", epoch + 1, config.epochs,
                 sum(losses) / len(losses), time.perf_counter() - t_epoch)  # fmt: skip
    val_idx = np.flatnonzero(is_val)
    val_acc = accuracy(encoder, head, frames[val_idx], labels[val_idx], config)
    train_acc = accuracy(encoder, head, frames[train_idx], labels[train_idx], config)
    meta = {
        "fingerprint": config.fingerprint(),
        "config": asdict(config),
        "classes": list(classes),
        "val_accuracy": val_acc,
        "train_accuracy": train_acc,
        "data_time_s": t_data,
        "total_time_s": time.perf_counter() - t0,
        "torch": str(torch.__version__),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": encoder.state_dict(), "head": head.state_dict(), "meta": meta}, tmp)
    os.replace(tmp, path)
    log.info("pretrained %s in %.0f s: held-out accuracy %.3f (train %.3f, chance %.3f) -> %s",
             config.encoder, meta["total_time_s"], val_acc, train_acc, 1 / len(classes),
             path)  # fmt: skip
    return path


def parse_args(argv: list[str]) -> tuple[PretrainConfig, Path | None, bool]:
    """The recipe, the output path and ``--force`` from the command line."""
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=d.data_root, help="clip set folder")
    p.add_argument("--output", type=Path, default=None,
                   help="checkpoint (default: DATA_ROOT/ENCODER.pt)")  # fmt: skip
    p.add_argument("--num-clips", type=int, default=d.num_clips)
    p.add_argument("--data-seed", type=int, default=d.data_seed)
    p.add_argument("--encoder", default=d.encoder, choices=PRETRAINABLE)
    p.add_argument("--snippet-length", type=int, default=d.snippet_length)
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"default {d.epochs}; the ViTs: {RECIPES['videomae_tiny']['epochs']}",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"default {d.lr:g}; the ViTs: {RECIPES['videomae_tiny']['lr']:g}",
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    a = p.parse_args(argv)
    for flag in ("num_clips", "snippet_length", "size", "epochs", "batch_size"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(a, flag)}")
    given = {k: v for k, v in (("epochs", a.epochs), ("lr", a.lr)) if v is not None}
    cfg = recipe(
        a.encoder, data_root=str(a.data_root), num_clips=a.num_clips, data_seed=a.data_seed,
        snippet_length=a.snippet_length, size=a.size, batch_size=a.batch_size,
        weight_decay=a.weight_decay, seed=a.seed, **given,
    )  # fmt: skip
    return cfg, a.output, a.force


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point; prints the checkpoint's path."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg, output, force = parse_args(sys.argv[1:] if argv is None else argv)
    path = pretrain_encoder(cfg, output, force=force)
    print(path)
    return path


if __name__ == "__main__":
    main()
