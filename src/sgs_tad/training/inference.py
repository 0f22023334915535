"""Evaluation without training: phase 1 alone, then the caller's step on every batch.

:func:`evaluate` is what :meth:`~sgs_tad.SGSTrainer.evaluate` runs, and it needs no trainer:
give it any :class:`~sgs_tad.engine.Engine` and detector, e.g. to score a saved model.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sgs_tad import SequentializedGradientSampler
    >>> engine = SequentializedGradientSampler(nn.Linear(6, 4), micro_batch_size=2)
    >>> data = [{"snippets": torch.randn(5, 6)}, {"snippets": torch.randn(3, 6)}]
    >>> evaluate(engine, nn.Linear(4, 1), data, lambda feats, batch, info: {"n": info.mask.sum()})
    {'n': 4.0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from sgs_tad.engine.base import Engine
from sgs_tad.engine.microbatch import as_sources
from sgs_tad.training import distributed as dist_utils
from sgs_tad.training.batches import SNIPPETS_KEY, check_batch, count_videos, make_loader
from sgs_tad.training.steps import StepInfo

__all__ = ["EvalStep", "evaluate"]

EvalStep = Callable[[torch.Tensor, Mapping[str, Any], StepInfo], Any]


@torch.no_grad()
def evaluate(
    engine: Engine,
    detector: nn.Module,
    data: Any,
    eval_step: EvalStep,
    *,
    batch_size: int = 1,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    seed: int = 0,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> dict[str, float]:
    """Run ``eval_step(feats, batch, info)`` on every batch with the modules in eval mode.

    ``feats`` are the encoder features ``[B, N_max, C]`` from the engine's
    ``encode_features`` (phase 1 alone: the sampler's random stream is not touched);
    ``info.mask`` is the mask and ``info.training`` is ``False``.

    Args:
        engine: Encodes the snippets; its ``encoder`` is put in eval mode.
        detector: Put in eval mode (``eval_step`` calls it).
        data: A map-style dataset of per-video items (sharded over ranks) or an iterable of
            batches.
        eval_step: Returns a mapping of per-batch metric means, or ``None`` (e.g. when it
            collects predictions for an mAP computed afterwards).
        batch_size: Videos per batch (dataset input only).
        collate_fn: Default :func:`~sgs_tad.training.batches.collate_videos`.
        seed: Seeds ``info.generator``.
        autocast: A factory of the autocast context to run in.

    Returns:
        The mean of ``eval_step``'s metrics, weighted by batch size, over batches and ranks.
        Train/eval modes are restored afterwards.
    """
    loader, sampler = make_loader(data, seed=seed, batch_size=batch_size, shuffle=False,
                                  num_workers=0, collate_fn=collate_fn,
                                  drop_last=False)  # fmt: skip
    if sampler is not None:
        sampler.set_epoch(0)
    modes = (engine.encoder.training, detector.training)
    engine.encoder.eval()
    detector.eval()
    sums: dict[str, float] = {}
    weight = 0.0
    try:
        for batch in loader:
            batch = check_batch(batch)
            snippets = batch[SNIPPETS_KEY]
            with autocast():
                feats = engine.encode_features(snippets)
                info = StepInfo.from_lengths(
                    [len(s) for s in as_sources(snippets)], device=feats.device, seed=seed,
                    rank=dist_utils.get_rank(), world_size=dist_utils.get_world_size(),
                    training=False,
                )  # fmt: skip
                out = eval_step(feats, batch, info)
            b = float(count_videos(snippets))
            weight += b
            for key, value in (out or {}).items():
                sums[key] = sums.get(key, 0.0) + float(value) * b
    finally:
        engine.encoder.train(modes[0])
        detector.train(modes[1])
    keys = sorted(sums)
    totals = dist_utils.GradientReducer([], flags_device=engine.device).reduce(
        [weight, *(sums[k] for k in keys)]
    )
    return {k: v / totals[0] for k, v in zip(keys, totals[1:])} if totals[0] else {}
