"""Command line: ``python -m sgs_tad.evaluation GROUND_TRUTH.json PREDICTIONS.json``.

Prints the mAP at each tIoU threshold and the average mAP; ``--output`` also writes them as
JSON (``{"average_mAP": ..., "mAP": {"0.5": ...}, "ap_per_class": {...}, ...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from sgs_tad.evaluation.detection import default_tiou_thresholds, evaluate_detection
from sgs_tad.evaluation.formats import EvaluationWarning

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sgs_tad.evaluation",
        description="ActivityNet-protocol temporal action detection mAP "
        "(same numbers as the official eval_detection.py).",
    )
    parser.add_argument("ground_truth", help="ActivityNet-format ground truth JSON")
    parser.add_argument("predictions", help="results JSON ({'results': {video: [...]}})")
    parser.add_argument(
        "--subset", default="validation", help="subset to evaluate (default: validation)"
    )
    parser.add_argument(
        "--dataset",
        choices=("activitynet", "thumos"),
        default="activitynet",
        help="default thresholds: activitynet 0.5:0.05:0.95, thumos 0.3:0.1:0.7",
    )
    parser.add_argument(
        "--tiou", type=float, nargs="+", metavar="T", help="tIoU thresholds (override --dataset)"
    )
    parser.add_argument(
        "--blocked-videos",
        metavar="JSON",
        help="JSON list of video ids to leave out of both files",
    )
    parser.add_argument(
        "--class-agnostic", action="store_true", help="treat every label as the same class"
    )
    parser.add_argument(
        "--strict", action="store_true", help="turn data warnings into errors (exit status 2)"
    )
    parser.add_argument("--output", metavar="JSON", help="also write the results to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 on bad input)."""
    parser = _parser()
    args = parser.parse_args(argv)
    thresholds = args.tiou if args.tiou else default_tiou_thresholds(args.dataset)
    try:
        blocked: list[str] = []
        if args.blocked_videos:
            blocked_data = _load_id_list(args.blocked_videos)
            blocked = [str(v) for v in blocked_data]
        with warnings.catch_warnings():
            if args.strict:
                warnings.simplefilter("error", EvaluationWarning)
            result = evaluate_detection(
                args.ground_truth,
                args.predictions,
                subset=args.subset,
                tiou_thresholds=thresholds,
                blocked_videos=set(blocked),
                class_agnostic=args.class_agnostic,
            )
    except (OSError, ValueError, TypeError, EvaluationWarning) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    payload = result.to_dict()
    print(
        f"subset {args.subset}: {result.num_ground_truth} ground-truth instances, "
        f"{len(result.ap_per_class)} classes, {result.num_predictions} predictions"
    )
    for key, value in payload["mAP"].items():
        print(f"mAP@{key:<6} {100 * value:6.2f}")
    print(f"average mAP {100 * result.average_mAP:6.2f}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fobj:
            json.dump(payload, fobj, indent=2)
    return 0


def _load_id_list(path: str) -> list[object]:
    """Read a JSON list (e.g. ActivityNet's blocked video ids) from ``path``."""
    with open(path, encoding="utf-8") as fobj:
        try:
            data = json.load(fobj)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path!r} is not valid JSON ({err})") from err
    if isinstance(data, dict):  # tolerate {"video_id": ...} mappings
        data = list(data)
    if not isinstance(data, list):
        raise ValueError(f"{path!r} holds a JSON {type(data).__name__}, expected a list of ids")
    return data


if __name__ == "__main__":
    sys.exit(main())
