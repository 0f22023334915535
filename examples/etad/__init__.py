"""ETAD, the paper's reference action detector, in plain PyTorch.

``ETAD(ETADConfig())`` builds the detector of the paper (``ETADConfig.small()`` a reduced one);
``model(features [B, C, T], gt_segments)`` returns its training losses with Action Proposal
Sampling, ``model.predict(features)`` one :class:`ETADPrediction` per video, which
:func:`to_detections` turns into ActivityNet-format detections. See
``docs/etad.md``.
"""

from .config import ETADConfig
from .detections import to_detections
from .model import ETAD, ETADPrediction
from .roi import roi_interpolate

__all__ = ["ETAD", "ETADConfig", "ETADPrediction", "roi_interpolate", "to_detections"]
