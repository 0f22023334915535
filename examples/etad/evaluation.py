"""The main job's evaluation: detections of videos and their ActivityNet (or THUMOS) mAP.

:func:`predict_videos` runs phase 1 and ETAD on videos; :func:`evaluate` scores a data set
(windows merged per video with ``--layout thumos``), :func:`evaluation_summary` gives its
JSON-ready numbers and :func:`print_evaluation` prints them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgs_tad import SequentializedGradientSampler
from sgs_tad.data import ActivityNetDataset
from sgs_tad.detection.postprocess import merge_window_detections
from sgs_tad.engine.sizing import AUTO_ENCODE_FACTOR
from sgs_tad.evaluation import (
    ACTIVITYNET_TIOU_THRESHOLDS,
    THUMOS_TIOU_THRESHOLDS,
    evaluate_detection,
    format_results,
)

from .data import windowed
from .detections import to_detections
from .detector import Detector

#: Snippets per encoder call of an evaluation, in units of K: phase 1 alone keeps no graph, so
#: its calls may hold the snippets of 8 phase-3 micro-batches (the cap of the library's
#: ``encode_batch_size="auto"``), and fewer calls cost less per-call overhead.
EVALUATION_CALL_FACTOR = AUTO_ENCODE_FACTOR


def evaluation_engine(encoder: nn.Module, k: int, device: str) -> SequentializedGradientSampler:
    """The one engine of an evaluation (or a prediction): phase 1 alone, in calls of 8 K.

    Built once per evaluation, so its independence and norm checks run once, not per batch.
    """
    return SequentializedGradientSampler(encoder, micro_batch_size=k, ratio=0.0, device=device,
                                         encode_batch_size=EVALUATION_CALL_FACTOR * k)  # fmt: skip


@torch.no_grad()
def predict_videos(
    encoder: nn.Module,
    detector: Detector,
    sources: list[Any],
    k: int,
    device: str,
    *,
    engine: SequentializedGradientSampler | None = None,
) -> tuple[list[Any], torch.Tensor]:
    """Detections and class scores of videos: phase 1 alone (no graph, no sample), then ETAD.

    Pass the ``engine`` of :func:`evaluation_engine` when predicting batch after batch; without
    it one is built for this call.
    """
    encoder.eval()
    detector.eval()
    if engine is None:
        engine = evaluation_engine(encoder, k, device)
    return detector.predict(engine.encode_features(sources))


EVALUATION_VERSION = 2  # 2: class-agnostic mAP from detections made without class fusion


def evaluate(
    args: argparse.Namespace,
    encoder: nn.Module,
    detector: Detector,
    dataset: ActivityNetDataset,
    ann: Path,
    classes: list[str],
    subset: str = "validation",
) -> dict[str, Any]:
    """ActivityNet mAP of ``dataset``, plus two numbers that say where the mAP is lost.

    ``class_agnostic_mAP`` scores localisation alone: the proposals' own scores, without the
    class fusion (which would list every proposal once per fused class), every label the same
    class. ``video_accuracy`` is the top-1 accuracy of the video-level class scores against the
    video's first label, over the videos that have one: the class every detection of the video
    is fused with first.

    With ``--layout thumos`` every window of a video is one item (its class scores, its
    ``video_accuracy`` entry); its detections are shifted to video time by the window's offset
    and the windows of a video merged (soft-NMS per class); mAP is at tIoU 0.3:0.1:0.7.
    """
    thumos = args.layout == "thumos"
    items = windowed(args, dataset, training=False)
    # per video, the detections of each of its windows (one "window" per video for anet)
    results: dict[str, list[list[dict[str, Any]]]] = {}
    agnostic: dict[str, list[list[dict[str, Any]]]] = {}
    correct = labelled = 0
    engine = evaluation_engine(encoder, args.micro_batch_size, args.device)
    for start in range(0, len(items), args.batch_size):
        samples = [items[i] for i in range(start, min(start + args.batch_size, len(items)))]
        sources = [s.source for s in samples]
        preds, probs = predict_videos(encoder, detector, sources, args.micro_batch_size,
                                      args.device, engine=engine)  # fmt: skip
        for s, pred, prob in zip(samples, preds, probs):
            place = dict(duration=s.duration, offset=s.offset)
            results.setdefault(s.video_id, []).append(
                to_detections(pred, class_scores=prob.cpu(), class_names=classes, **place)
            )
            agnostic.setdefault(s.video_id, []).append(to_detections(pred, **place))
            if len(s.labels) > 0:
                labelled += 1
                correct += int(int(prob.argmax()) == int(s.labels[0]))
    join = merge_window_detections if thumos else (lambda windows: windows[0])
    predictions = format_results({v: join(w) for v, w in results.items()})
    thresholds = THUMOS_TIOU_THRESHOLDS if thumos else ACTIVITYNET_TIOU_THRESHOLDS
    metrics = evaluate_detection(ann, predictions, subset=subset, tiou_thresholds=thresholds)
    localisation = evaluate_detection(
        ann,
        format_results({v: join(w) for v, w in agnostic.items()}),
        subset=subset,
        class_agnostic=True,
        tiou_thresholds=thresholds,
    )
    return {
        "predictions": predictions,
        "result": metrics,
        "class_agnostic_mAP": localisation.average_mAP,
        "video_accuracy": correct / max(1, labelled),
    }


def evaluation_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready numbers of :func:`evaluate`: mAP at every threshold of the protocol
    (ActivityNet 0.5:0.05:0.95, whose 0.5, 0.75 and 0.95 get a key of their own; THUMOS
    0.3:0.1:0.7, each with a key) and their mean."""
    res = ev["result"]
    if tuple(res.tiou_thresholds) == THUMOS_TIOU_THRESHOLDS:
        headline = {f"mAP@{t:g}": res.mAP[t] for t in THUMOS_TIOU_THRESHOLDS}
    else:
        headline = {"mAP@0.5": res.mAP[0.5], "mAP@0.75": res.mAP[0.75],
                    "mAP@0.95": res.mAP[0.95]}  # fmt: skip
    return {
        **headline,
        "average_mAP": res.average_mAP,
        "mAP": {str(k): v for k, v in res.mAP.items()},
        "class_agnostic_mAP": ev["class_agnostic_mAP"],
        "video_accuracy": ev["video_accuracy"],
        "evaluation_version": EVALUATION_VERSION,
    }


def print_evaluation(summary: dict[str, Any]) -> None:
    at = "  ".join(f"{k} {100 * v:.2f}" for k, v in summary.items() if k.startswith("mAP@"))
    print(
        f"{at}  average {100 * summary['average_mAP']:.2f}\n"
        f"class-agnostic average mAP {100 * summary['class_agnostic_mAP']:.2f}, video "
        f"classification accuracy {100 * summary['video_accuracy']:.1f} %"
    )
