"""Temporal action detection evaluation with the ActivityNet protocol.

``evaluate_detection(ground_truth, predictions)`` reproduces the official ActivityNet
``eval_detection.py`` (same matching, same interpolated AP, same order for equal scores) on
dicts or JSON paths, without pandas. From a shell::

    python -m sgs_tad.evaluation GROUND_TRUTH.json PREDICTIONS.json --subset validation

See ``docs/evaluation.md`` for where we deliberately differ on malformed input.
"""

from sgs_tad.evaluation.detection import (
    ACTIVITYNET_TIOU_THRESHOLDS,
    THUMOS_TIOU_THRESHOLDS,
    DetectionResult,
    default_tiou_thresholds,
    evaluate_detection,
    interpolated_average_precision,
)
from sgs_tad.evaluation.formats import EvaluationWarning, format_results, load_json

__all__ = [
    "ACTIVITYNET_TIOU_THRESHOLDS",
    "THUMOS_TIOU_THRESHOLDS",
    "DetectionResult",
    "EvaluationWarning",
    "default_tiou_thresholds",
    "evaluate_detection",
    "format_results",
    "interpolated_average_precision",
    "load_json",
]
