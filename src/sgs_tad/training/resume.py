"""What an :class:`~sgs_tad.SGSTrainer` checkpoint holds, and putting it back.

A checkpoint holds the weights, optimizer, scheduler and GradScaler states, the step
counters, the run's ``settings`` and, per rank, the global random states and the engine's
state (its sampler's generator). With the same world size a resume is bit-identical to an
uninterrupted run (tested); version 1 checkpoints (before ``settings``) load too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgs_tad.engine.rng import capture_global_rng_state, restore_global_rng_state
from sgs_tad.training import distributed as dist_utils
from sgs_tad.training.checkpoint import (
    check_resumable,
    check_settings,
    load_checkpoint,
    parameter_shapes,
)

if TYPE_CHECKING:
    from sgs_tad.training.trainer import SGSTrainer

__all__ = ["restore_trainer_state", "resume_trainer", "trainer_state", "type_name"]

logger = logging.getLogger(__name__)

FORMAT, VERSION = "sgs_tad.training.trainer", 2


def type_name(obj: Any) -> str | None:
    """``module.QualName`` of ``obj``'s type (``None`` for ``None``): tells schedulers apart."""
    if obj is None:
        return None
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def trainer_state(trainer: SGSTrainer) -> dict[str, Any]:
    """The checkpoint of ``trainer`` (collective: every rank must call it)."""
    per_rank = dist_utils.gather_objects(
        {"rng": capture_global_rng_state(), "sgs": trainer.engine.state_dict()}
    )
    modules = {"encoder": trainer.encoder, "detector": trainer.detector}
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": trainer.fingerprint(),
        "shapes": parameter_shapes(modules),
        "world_size": trainer.world_size,
        "encoder": trainer.encoder.state_dict(),
        "detector": trainer.detector.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scheduler_type": type_name(trainer.scheduler),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "per_rank": per_rank,
        "epoch": trainer.epoch,
        "epoch_iteration": trainer.epoch_iteration,
        "step": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "settings": trainer.settings,
    }


def restore_trainer_state(
    trainer: SGSTrainer,
    state: Mapping[str, Any],
    *,
    source: str = "the checkpoint",
    strict_world_size: bool = True,
    override: bool = False,
) -> None:
    """Restore :func:`trainer_state` into ``trainer``.

    Args:
        trainer: the trainer to restore into (built like the one that saved).
        state: the saved state (from :func:`~sgs_tad.training.checkpoint.load_checkpoint`).
        source: where it came from, for messages.
        strict_world_size: refuse a checkpoint written with another number of ranks.
            With ``False``, weights, optimizer, scheduler, scaler and step counters are
            restored, but the data order and per-rank random streams cannot be: the
            interrupted epoch restarts from its first batch with the new sharding, and the
            run is no longer bit-identical to an uninterrupted one.
        override: accept a checkpoint whose ``settings`` differ from the trainer's (each
            difference is logged).

    Raises:
        ValueError: the checkpoint is for a different model, other settings, another
            scheduler, or the world size changed; nothing is restored then.
    """
    modules = {"encoder": trainer.encoder, "detector": trainer.detector}
    same_world = check_resumable(state, modules=modules, world_size=trainer.world_size,
                                 source=source, strict_world_size=strict_world_size)  # fmt: skip
    check_settings(state.get("settings"), trainer.settings, source=source, override=override)
    saved_scheduler = state.get("scheduler_type")  # absent in older checkpoints
    if saved_scheduler is not None and saved_scheduler != type_name(trainer.scheduler):
        raise ValueError(
            f"{source} was written with the learning-rate scheduler {saved_scheduler}, but "
            f"this trainer has {type_name(trainer.scheduler)}; its state cannot be restored "
            "into another scheduler. Resume with the schedule it was trained with, or use a "
            "fresh checkpoint_dir."
        )
    trainer.encoder.load_state_dict(state["encoder"])
    trainer.detector.load_state_dict(state["detector"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state["scheduler"] is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer.step = int(state["step"])
    trainer.skips.total = int(state["skipped_steps"])
    if same_world:
        mine = state["per_rank"][trainer.rank]
        restore_global_rng_state(mine["rng"])
        trainer.engine.load_state_dict(mine["sgs"])
        trainer.epoch_iteration = int(state["epoch_iteration"])
    else:
        logger.warning(
            "world size changed (%s -> %d): epoch %d restarts from its first batch",
            state["world_size"], trainer.world_size, trainer.epoch,
        )  # fmt: skip
        trainer.epoch_iteration = 0
    logger.info("resumed from %s at epoch %d, step %d", source, trainer.epoch, trainer.step)


def resume_trainer(trainer: SGSTrainer, resume: bool | str | Path, *, override: bool) -> None:
    """What ``fit(resume=...)`` does: ``True`` takes the newest intact checkpoint of the
    trainer's ``checkpoint_dir`` (a warning says when there is none), a path that file."""
    if resume is not True:
        path = str(resume)
        trainer.load_state_dict(load_checkpoint(path), source=path, override=override)
        return
    if trainer.checkpoints is None:
        raise ValueError("resume=True needs checkpoint_dir=... in SGSTrainer.")
    found = trainer.checkpoints.load_latest()
    if found is None:
        logger.warning(
            "resume requested but no checkpoint in %s: training from scratch",
            trainer.checkpoints.directory,
        )
        return
    trainer.load_state_dict(found[0], source=str(found[1]), override=override)
