"""The main job's subcommands on a trained ``model.pt``: ``evaluate`` and ``predict``.

:func:`load_model` rebuilds the run's encoder and detector from the ``model.pt`` that training
writes; :func:`evaluate_command` scores it on a subset of its data (or of other data),
:func:`predict` detects the actions of one video file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgs_tad.data import ActivityNetDataset, VideoSample, sliding_windows, window_sample
from sgs_tad.data.snippets import MediaSnippetSource, draw_crop, snippet_frame_indices
from sgs_tad.data.video import probe_media
from sgs_tad.detection.postprocess import merge_window_detections

from .data import PIXEL_MEAN, PIXEL_STD, data_paths, dataset_options
from .detections import to_detections
from .detector import Detector
from .evaluation import (
    evaluate,
    evaluation_engine,
    evaluation_summary,
    predict_videos,
    print_evaluation,
)
from .options import check_device, fail
from .training import build_models


def load_model(path: Path, device: str) -> tuple[argparse.Namespace, nn.Module, Detector, list]:
    """The run's arguments, encoder, detector and class names from a ``model.pt``."""
    check_device(device)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, damaged, or refused by weights_only
        first = (str(err).strip().splitlines() or [""])[0]
        fail(f"--model {path} cannot be loaded ({type(err).__name__}: {first}); pass the "
             "model.pt that training writes into --output-dir")  # fmt: skip
    needed = {"args", "encoder", "detector", "classes", "in_channels"}
    if not isinstance(state, dict) or not needed <= set(state):
        kind, missing = "a file", sorted(needed)
        if isinstance(state, dict):
            missing = sorted(needed - set(state))
            if "step" in state and "optimizer" in state:
                kind = f"a training checkpoint (step {state['step']})"
        fail(
            f"--model {path} is {kind}, not a model.pt (it lacks {missing}); pass the model.pt "
            "that training writes into --output-dir, e.g. outputs/etad_anet/model.pt"
        )
    args = argparse.Namespace(**state["args"])
    args.weights, args.device = None, device
    # model.pt files written before these options existed used the older defaults
    args.class_head = getattr(args, "class_head", "mean")
    args.feature_norm = getattr(args, "feature_norm", "running")
    args.layout = getattr(args, "layout", "anet")
    args.window = getattr(args, "window", None)
    encoder, detector = build_models(args, state["in_channels"], len(state["classes"]))
    encoder.load_state_dict(state["encoder"])
    detector.load_state_dict(state["detector"])
    return args, encoder, detector, list(state["classes"])


def evaluate_command(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="etad_anet.py evaluate",
        description="Evaluate a trained model.pt on a subset of its data (or of other data).",
    )
    p.add_argument("--model", type=Path, default=Path("outputs/etad_anet/model.pt"))
    p.add_argument("--annotations", type=Path, default=None, help="default: the run's")
    p.add_argument("--data-root", type=Path, default=None, help="default: the run's")
    p.add_argument("--subset", default="validation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=None, help="write the numbers to this JSON")
    a = p.parse_args(argv)
    if not a.model.is_file():
        p.error(f"no model at {a.model}: train first (python examples/etad_anet.py)")
    args, encoder, detector, classes = load_model(a.model, a.device)
    if a.annotations is not None:
        args.annotations = a.annotations
    if a.data_root is not None:
        if args.features is not None:
            args.features = a.data_root
        else:
            args.data_root = a.data_root
    ann, root, mode = data_paths(args)
    if not ann.is_file():
        p.error(f"no annotation file at {ann}: pass --annotations (and --data-root)")
    dataset = ActivityNetDataset(
        ann, root, subset=a.subset, classes=classes, **dataset_options(args, mode)
    )
    summary = evaluation_summary(
        evaluate(args, encoder, detector, dataset, ann, classes, subset=a.subset)
    )
    print_evaluation(summary)
    if a.output is not None:
        a.output.write_text(json.dumps(summary, indent=2))
    return summary


def predict(argv: list[str]) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="etad_anet.py predict",
                                description="Detect actions in one video file.")  # fmt: skip
    p.add_argument("video", type=Path)
    p.add_argument("--model", type=Path, default=Path("outputs/etad_anet/model.pt"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--top", type=int, default=10, help="segments printed")
    a = p.parse_args(argv)
    if not a.video.is_file():
        p.error(f"no video file at {a.video}")
    if not a.model.is_file():
        p.error(f"no model at {a.model}: train first (python examples/etad_anet.py)")
    args, encoder, detector, classes = load_model(a.model, a.device)
    info = probe_media(a.video, "video")
    size = (args.size, args.size)
    thumos = args.layout == "thumos"
    frames = snippet_frame_indices(info.num_frames, None if thumos else args.num_snippets,
                                   args.snippet_length)  # fmt: skip
    source = MediaSnippetSource(
        a.video,
        frames,
        kind="video",
        crop=draw_crop((info.height, info.width), size, mode="center"),
        size=size,
        mean=PIXEL_MEAN,
        std=PIXEL_STD,
    )
    duration = info.num_frames / info.fps  # type: ignore[operator]
    if not thumos:
        preds, probs = predict_videos(encoder, detector, [source], args.micro_batch_size,
                                      a.device)  # fmt: skip
        dets = to_detections(preds[0], duration=duration, class_scores=probs[0],
                             class_names=classes)  # fmt: skip
    else:  # the windows of evaluate(), merged back into the video's detections
        n = int(frames.shape[0])
        if n < args.window:
            fail(f"{a.video} has {n} snippets, fewer than one window of {args.window} (the "
                 "model's); pass a longer video")  # fmt: skip
        video = VideoSample(source, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long),
                            a.video.stem, duration, float(info.fps),  # type: ignore[arg-type]
                            (frames.float().mean(dim=1) + 0.5) / info.fps)  # type: ignore[operator]  # fmt: skip
        windows = []
        engine = evaluation_engine(encoder, args.micro_batch_size, a.device)  # one per video
        for lo, hi in sliding_windows(n, window=args.window, stride=max(1, args.window // 2)):
            w = window_sample(video, lo, hi)
            preds, probs = predict_videos(encoder, detector, [w.source], args.micro_batch_size,
                                          a.device, engine=engine)  # fmt: skip
            windows.append(to_detections(preds[0], duration=w.duration, offset=w.offset,
                                         class_scores=probs[0], class_names=classes))  # fmt: skip
        dets = merge_window_detections(windows)
    for d in dets[: a.top]:
        print(f"{d['segment'][0]:7.2f} s - {d['segment'][1]:7.2f} s  {d['label']:<12s} "
              f"score {d['score']:.3f}")  # fmt: skip
    return dets
