"""The main job's training parts: the process group, the models, the engine, the schedule.

:func:`build_models` builds the encoder (or the identity, on features) and the ETAD detector;
:func:`make_engine` SGS (or plain end-to-end backprop), :func:`make_scheduler` the
``--schedule``, :func:`detector_step` the trainer's detector step. ``train`` in
``examples/etad_anet.py`` puts them together.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from sgs_tad import EndToEnd, Engine, SequentializedGradientSampler, SGSTrainer, StepInfo
from sgs_tad.data import ActivityNetDataset, WindowedDataset
from sgs_tad.encoders import build_encoder, freeze_encoder
from sgs_tad.training.callbacks import Callback
from sgs_tad.training.distributed import init_distributed
from sgs_tad.training.optimization import SchedulerFactory, step_decay, warmup_cosine

from .config import ETADConfig
from .data import PIXEL_MEAN, PIXEL_STD
from .detector import Detector
from .options import fail, temporal_scale


def setup_distributed(device: str, timeout: float | None = None) -> tuple[int, int]:
    """Join the process group when started by torchrun; single-process runs need none.

    A collective that waits more than ``timeout`` seconds (``--ddp-timeout``, default
    ``$SGS_TAD_DDP_TIMEOUT`` or 600) fails, naming the rank(s) that did not answer.
    """
    try:
        return init_distributed(device=device, timeout=timeout)
    except ValueError as err:  # a bad $SGS_TAD_DDP_TIMEOUT
        fail(str(err))


def build_models(
    args: argparse.Namespace, in_channels: int | None, num_classes: int
) -> tuple[nn.Module, Detector]:
    if in_channels is not None:  # features mode: the "encoder" is the identity, frozen
        encoder: nn.Module = nn.Identity()
        channels = in_channels
    else:
        # --checkpoint-blocks (ViTs): model.pt files written before it existed have no key
        blocks: dict[str, Any] = (
            {"checkpoint_blocks": True} if getattr(args, "checkpoint_blocks", False) else {}
        )
        video = build_encoder(args.encoder, weights=args.weights, **blocks)
        frozen = args.frozen_stages
        if args.encoder != "small3d" or frozen >= 0:
            video = freeze_encoder(video, frozen_stages=frozen)
        channels = video.out_channels
        # uint8 snippets (--pixels) are normalised by the encoder, on the device, with the
        # data set's statistics; float snippets arrive normalised and pass through
        video.set_input_normalisation(PIXEL_MEAN, PIXEL_STD)
        encoder = video
    config = ETADConfig.small(
        in_channels=channels,
        temporal_scale=temporal_scale(args),
        max_duration=temporal_scale(args),
        aps_ratio=args.aps_ratio,
        aps_strategy=args.proposal_sampler,
    )
    detector = Detector(
        config,
        num_classes,
        feature_norm=args.feature_norm,
        class_head=args.class_head,
    )
    return encoder.to(args.device), detector.to(args.device)


class EpochSetter(Callback):
    """Redraw the random crops every epoch (the data set's crops depend on its epoch)."""

    def __init__(self, dataset: ActivityNetDataset | WindowedDataset) -> None:
        self.dataset = dataset

    def on_epoch_start(self, trainer: SGSTrainer, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def detector_step(
    detector: Detector,
) -> Callable[[torch.Tensor, dict[str, list[Any]], StepInfo], Any]:
    """The trainer's detector step: ETAD's losses with APS plus the class head's."""

    def step(feats: torch.Tensor, batch: dict[str, list[Any]], info: StepInfo) -> Any:
        # info.generator is derived from (seed, step, rank): reproducible, and a resumed run
        # draws exactly the APS subsets the uninterrupted one would have.
        return detector(feats, batch["segments"], batch["labels"], generator=info.generator)

    return step


def make_scheduler(
    args: argparse.Namespace, num_videos: int, world: int, encoder: nn.Module
) -> SchedulerFactory:
    """The ``--schedule`` factory: per-step cosine with the encoder hold, or step decay."""
    if args.schedule != "cosine":
        return step_decay(milestones=(max(1, round(args.epochs * 5 / 6)),))
    steps_per_epoch = math.ceil(num_videos / (args.batch_size * world))
    # no encoder group when nothing in it trains (features mode, every stage frozen)
    trains = any(p.requires_grad for p in encoder.parameters())
    delay = {"encoder": round(args.encoder_delay * steps_per_epoch)} if trains else {}
    return warmup_cosine(total_steps=max(1, args.epochs * steps_per_epoch),
                         warmup_steps=steps_per_epoch, delay_steps=delay)  # fmt: skip


def make_engine(args: argparse.Namespace, encoder: nn.Module, mode: str) -> Engine:
    """SGS (frozen in features mode), or plain end-to-end backprop for ``--naive``."""
    if args.naive:
        return EndToEnd(encoder, device=args.device)
    ratio = 0.0 if mode == "features" else args.ratio
    prefetches: dict[str, bool | Literal["auto"]] = {"auto": "auto", "on": True, "off": False}
    prefetch = prefetches[args.prefetch]
    return SequentializedGradientSampler(encoder, micro_batch_size=args.micro_batch_size,
                                         encode_batch_size=args.encode_batch_size,
                                         keep_graphs=args.keep_graphs, prefetch=prefetch,
                                         ratio=ratio, sampler=args.snippet_sampler,
                                         grad_scale=args.grad_scale,
                                         on_nonfinite_grad="skip", device=args.device)  # fmt: skip
