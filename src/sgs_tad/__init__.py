"""sgs_tad: end-to-end temporal action detection with Sequentialized Gradient Sampling.

The public names most users need are re-exported here; everything else lives in the module
named after its concept (``sgs_tad.samplers``, ``sgs_tad.proposals``, ``sgs_tad.norm`` …).
"""

from .engine import EndToEnd, Engine
from .independence import SnippetMixingError, check_snippet_independence
from .norm import FrozenBatchNorm, freeze_norm_layers, freeze_stages
from .phase import is_encoding, is_recomputing
from .proposals import ProposalMap, sample_proposals
from .samplers import make_sampler
from .sgs import SequentializedGradientSampler
from .sources import NonFiniteSnippetsError, SnippetReadError, SnippetSource, TensorSource
from .steps import StepInfo
from .trainer import SGSTrainer

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
