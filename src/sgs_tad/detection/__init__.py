"""The task's detector-side pieces, shared by any detector.

* :mod:`~sgs_tad.detection.proposals`: the dense start/end proposal map and Action Proposal
  Sampling (APS).
* :mod:`~sgs_tad.detection.postprocess`: from scores to detections (soft-NMS, class fusion,
  merging windows).

With :mod:`sgs_tad.data` (ActivityNet-format data, synthetic videos) and
:mod:`sgs_tad.evaluation` (the ActivityNet protocol) they make up the task side of the library.
"""

from sgs_tad.detection.proposals import ProposalMap, sample_proposals

__all__ = ["ProposalMap", "sample_proposals"]
