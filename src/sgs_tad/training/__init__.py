"""The training loop: :class:`SGSTrainer` and everything it owns.

* :mod:`~sgs_tad.training.trainer`: the loop (epochs, batches, evaluation, checkpoints).
* :mod:`~sgs_tad.training.window`, :mod:`~sgs_tad.training.policies`,
  :mod:`~sgs_tad.training.steps`: one optimizer step over an accumulation window, the checks
  and skip policies around it, and what a step function returns.
* :mod:`~sgs_tad.training.optimization`: parameter groups, learning rates and schedules.
* :mod:`~sgs_tad.training.checkpoint`, :mod:`~sgs_tad.training.resume`,
  :mod:`~sgs_tad.training.signals`: atomic checkpoints, exact resume, stopping on signals.
* :mod:`~sgs_tad.training.batches`, :mod:`~sgs_tad.training.distributed`: data loading and DDP.
* :mod:`~sgs_tad.training.inference`, :mod:`~sgs_tad.training.metrics`,
  :mod:`~sgs_tad.training.callbacks`, :mod:`~sgs_tad.training.adapters`: evaluation, metrics
  files, hooks and adapters for detectors such as ActionFormer.

It builds on :mod:`sgs_tad.engine` and never the other way round.
"""

from sgs_tad.training.steps import StepInfo
from sgs_tad.training.trainer import SGSTrainer

__all__ = ["SGSTrainer", "StepInfo"]
