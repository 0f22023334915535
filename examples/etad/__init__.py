"""ETAD, the paper's reference action detector, in plain PyTorch.

``ETAD(ETADConfig())`` builds the detector of the paper (``ETADConfig.small()`` a reduced one);
``model(features [B, C, T], gt_segments)`` returns its training losses with Action Proposal
Sampling, ``model.predict(features)`` one :class:`ETADPrediction` per video, which
:func:`to_detections` turns into ActivityNet-format detections. See
``docs/etad.md``.

The main job, ``examples/etad_anet.py``, is a thin entry over the modules here that hold its
parts: :mod:`.options`, :mod:`.data`, :mod:`.training`, :mod:`.evaluation` and
:mod:`.prediction` (imported on their own, not by this package).
"""

from .config import ETADConfig
from .detections import to_detections
from .model import ETAD, ETADPrediction
from .roi import roi_interpolate

__all__ = ["ETAD", "ETADConfig", "ETADPrediction", "roi_interpolate", "to_detections"]
