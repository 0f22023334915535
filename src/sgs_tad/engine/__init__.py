"""The method: SGS's three phases and everything they rest on.

* :mod:`~sgs_tad.engine.sgs`: :class:`SequentializedGradientSampler`, phases 1 and 3.
* :mod:`~sgs_tad.engine.base`: the :class:`Engine` seam and the :class:`EndToEnd` baseline.
* :mod:`~sgs_tad.engine.microbatch`, :mod:`~sgs_tad.engine.sources`: packing snippets of
  several videos into micro-batches, and the lazy sources they are read from.
* :mod:`~sgs_tad.engine.rng`, :mod:`~sgs_tad.engine.phase`: replaying random streams in phase 3,
  and telling the encoder which phase runs.
* :mod:`~sgs_tad.engine.norm`, :mod:`~sgs_tad.engine.independence`: the checks that make SGS
  exact (frozen BatchNorm, snippets that do not mix).
* :mod:`~sgs_tad.engine.memory`, :mod:`~sgs_tad.engine.sizing`, :mod:`~sgs_tad.engine.keep`:
  measuring an encoder's memory, choosing K and the phase-1 call size from it, and keeping
  phase-1 graphs within a byte budget.
* :mod:`~sgs_tad.engine.heap`: returning freed host memory to the system.

Nothing here imports the training loop or the task: :mod:`sgs_tad.training` builds on it.
"""

from sgs_tad.engine.base import EndToEnd, Engine
from sgs_tad.engine.sgs import SequentializedGradientSampler, SGSStats

__all__ = ["EndToEnd", "Engine", "SGSStats", "SequentializedGradientSampler"]
