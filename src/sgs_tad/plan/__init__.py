"""Memory and time planner: measure one micro-batch of an encoder, predict N, K and γ.

:func:`measure_snippet_cost` runs one micro-batch of snippets through an encoder and returns a
:class:`SnippetCost`: what one snippet costs in bytes saved for backward, in transient
(workspace) bytes and in forward/backward time, plus the fixed bytes of the parameters, their
gradients and the optimiser state. :func:`predict` turns that into the peak memory and the time
per video of naive end-to-end training, temporal checkpointing and SGS, and :func:`recommend`
picks the largest micro-batch K that fits a memory budget and the largest ratio γ that fits a
time budget.

The model (per video of N snippets; s = saved bytes per snippet, w = workspace per snippet,
x = input bytes per snippet, f = feature bytes per snippet, P = fixed bytes, n = sampled
snippets, m = min(K, n)):

========== ================================================ ===========================
method     peak memory                                      time
========== ================================================ ===========================
naive      P + 2Nf + N·s + N·w                              N·(t_fg + t_b)
checkpoint P + 2Nf + N·x + K·(s + w)                        N·(t_fn + t_fg + t_b)
sgs        P + 2Nf + max(K·w, m·(s + w))                    N·t_fn + n·(t_fg + t_b)
========== ================================================ ===========================

with t_fn, t_fg, t_b the per-snippet times of a no-grad forward, a forward with grad and a
backward. ``docs/plan.md`` explains each term and compares predictions with measured runs.

From the command line::

    python -m sgs_tad.plan --encoder small3d --snippet-shape 3,8,64,64 --n 16,32 \\
        --k 1,4 --ratio 0.3,1.0 --budget 2GB --time-budget 1.5

Example:
    >>> import torch
    >>> from torch import nn
    >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> cost = measure_snippet_cost(enc, (3, 4), micro_batch_size=2)
    >>> cost.input_bytes, cost.feature_bytes
    (48, 16)
    >>> sgs = predict(cost, n=64, k=4, ratio=0.5, method="sgs")
    >>> naive = predict(cost, n=64, method="naive")
    >>> sgs.saved_bytes < naive.saved_bytes
    True
    >>> parse_bytes("1.5GiB")
    1610612736
"""

from sgs_tad.engine.memory import (
    LiveBytesMeter,
    SavedBytesMeter,
    SnippetCost,
    format_bytes,
    measure_snippet_cost,
    parse_bytes,
)
from sgs_tad.engine.prefix import PrefixCost, measure_prefix_cost
from sgs_tad.plan.cli import main
from sgs_tad.plan.model import METHODS, Method, Prediction, Recommendation, predict, recommend
from sgs_tad.plan.verify import RunMeasurement, measure_run

__all__ = [
    "METHODS",
    "LiveBytesMeter",
    "Method",
    "Prediction",
    "PrefixCost",
    "Recommendation",
    "RunMeasurement",
    "SavedBytesMeter",
    "SnippetCost",
    "format_bytes",
    "main",
    "measure_prefix_cost",
    "measure_run",
    "measure_snippet_cost",
    "parse_bytes",
    "predict",
    "recommend",
]
