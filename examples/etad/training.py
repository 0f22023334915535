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
from sgs_tad.engine.memory import format_bytes, measure_snippet_cost
from sgs_tad.engine.microbatch import num_sampled
from sgs_tad.engine.prefix import DEFAULT_PREFIX_BUDGET
from sgs_tad.engine.sizing import probe_dtype
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
    budget = getattr(args, "memory_budget", None)
    sizes: dict[str, Any] = dict(micro_batch_size=args.micro_batch_size,
                                 encode_batch_size=args.encode_batch_size)  # fmt: skip
    if budget is not None:  # K and the phase-1 calls from the probe (resolve_sizing)
        sizes = dict(micro_batch_size="auto", memory_budget=budget, encode_batch_size="auto")
    return SequentializedGradientSampler(encoder, **sizes,
                                         keep_graphs=args.keep_graphs, prefetch=prefetch,
                                         reuse_frozen_prefix=getattr(
                                             args, "reuse_frozen_prefix", DEFAULT_PREFIX_BUDGET),
                                         ratio=ratio, sampler=args.snippet_sampler,
                                         grad_scale=args.grad_scale,
                                         on_nonfinite_grad="skip", device=args.device)  # fmt: skip


def encoder_memory(
    engine: Engine, sources: list[Any], *, micro_batch_size: int, ratio: float
) -> dict[str, Any] | None:
    """What the encoder saves for backward under SGS against naive end to end, for one batch.

    ``sources`` are the snippets of one batch (N in all); ``micro_batch_size`` is SGS's K where
    the engine does not choose it (``--naive``: what SGS would hold at ``--micro-batch-size``).
    SGS's micro-batches hold the batch's sampled snippets (γ N_i per video) K at a time, so
    never more than those: ``sgs_snippets = min(K, sampled)``.

    One probe (:func:`~sgs_tad.engine.memory.measure_snippet_cost`; with ``--memory-budget``
    the very probe that chose K) gives the bytes one snippet saves for backward, s. SGS holds
    one micro-batch's at a time, K s; naive end-to-end training holds the whole batch's, N s.
    Raises ``ValueError`` when ``--memory-budget`` cannot hold one snippet. ``None`` when the
    encoder does not train (features mode).
    """
    if not engine.trains_encoder or not any(p.requires_grad for p in engine.encoder.parameters()):
        return None
    n = sum(len(s) for s in sources)
    k, budget, choice = micro_batch_size, None, None
    if isinstance(engine, SequentializedGradientSampler):
        engine.resolve_sizing(sources)  # K now, from the budget, instead of at the first batch
        k, budget, choice = engine.micro_batch_size, engine.memory_budget, engine.auto_choice
    if choice is not None:
        saved = float(choice["saved_bytes_per_snippet"])
    else:
        first = sources[0].get_snippets(torch.zeros(1, dtype=torch.long))
        cost = measure_snippet_cost(engine.encoder, tuple(first.shape[1:]), device=engine.device,
                                    dtype=probe_dtype(first), repeats=1)  # fmt: skip
        saved = cost.saved_bytes
    held = min(k, sum(num_sampled(len(s), ratio) for s in sources))
    return {
        "saved_bytes_per_snippet": saved,
        "snippets_per_batch": n,
        "micro_batch_size": k,
        "memory_budget": budget,
        "sgs_snippets": held,
        "sgs_saved_bytes": held * saved,
        "naive_saved_bytes": n * saved,
        "engine": "sgs" if isinstance(engine, SequentializedGradientSampler) else "naive",
    }


def memory_line(memory: dict[str, Any]) -> str:
    """The line of :func:`encoder_memory` that the main job prints before training."""
    s, n = memory["saved_bytes_per_snippet"], memory["snippets_per_batch"]
    k, held, budget = memory["micro_batch_size"], memory["sgs_snippets"], memory["memory_budget"]
    chosen = f" chosen for --memory-budget {format_bytes(budget)}" if budget else ""
    of = f" (K = {k}{chosen}" + (f"; the batch's {held} sampled)" if held < k else ")")
    return (f"encoder activations saved for backward (measured by the probe, "
            f"{format_bytes(s)} per snippet): SGS holds {held} snippets at a time{of}, "
            f"{format_bytes(held * s)}; naive end to end would hold the batch's {n} snippets, "
            f"{format_bytes(n * s)} ({n / held:.1f}x)")  # fmt: skip
