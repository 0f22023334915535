"""sgs_tad: end-to-end temporal action detection with Sequentialized Gradient Sampling.

The public names most users need are re-exported here; everything else lives in the module
named after its concept (``sgs_tad.samplers``, ``sgs_tad.detection.proposals``,
``sgs_tad.engine.norm`` …).
"""

from sgs_tad.detection.proposals import ProposalMap, sample_proposals
from sgs_tad.engine.base import EndToEnd, Engine
from sgs_tad.engine.independence import SnippetMixingError, check_snippet_independence
from sgs_tad.engine.norm import FrozenBatchNorm, freeze_norm_layers, freeze_stages
from sgs_tad.engine.phase import is_encoding, is_recomputing
from sgs_tad.engine.sgs import SequentializedGradientSampler
from sgs_tad.engine.sources import (
    NonFiniteSnippetsError,
    SnippetReadError,
    SnippetSource,
    TensorSource,
)
from sgs_tad.samplers import make_sampler
from sgs_tad.training.steps import StepInfo
from sgs_tad.training.trainer import SGSTrainer

__all__ = [
    "EndToEnd",
    "Engine",
    "FrozenBatchNorm",
    "NonFiniteSnippetsError",
    "ProposalMap",
    "SGSTrainer",
    "SequentializedGradientSampler",
    "SnippetMixingError",
    "SnippetReadError",
    "SnippetSource",
    "StepInfo",
    "TensorSource",
    "check_snippet_independence",
    "freeze_norm_layers",
    "freeze_stages",
    "is_encoding",
    "is_recomputing",
    "make_sampler",
    "sample_proposals",
]

__version__ = "0.1.0"
