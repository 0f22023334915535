"""The main job's subcommands on a trained ``model.pt``: ``evaluate`` and ``predict``.

:func:`load_model` rebuilds the run's encoder and detector from the ``model.pt`` that training
writes; :func:`evaluate_command` scores it on a subset of its data (or of other data),
:func:`predict` detects the actions of one video file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgs_tad.data import ActivityNetDataset, VideoSample, sliding_windows, window_sample
from sgs_tad.data.snippets import MediaSnippetSource, draw_crop, snippet_frame_indices
from sgs_tad.data.video import probe_media
from sgs_tad.detection.postprocess import merge_window_detections
from sgs_tad.encoders import ENCODERS
from sgs_tad.training.outputs import atomic_write_json

from .data import PIXEL_MEAN, PIXEL_STD, data_paths, dataset_options
from .detections import to_detections
from .detector import CLASS_HEADS, FEATURE_NORMS, Detector
from .evaluation import (
    evaluate,
    evaluation_engine,
    evaluation_summary,
    predict_videos,
    print_evaluation,
)
from .options import LAYOUTS, check_device, fail
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
    check_stored_args(path, state)
    args = argparse.Namespace(**state["args"])
    args.weights, args.device = None, device
    # model.pt files written before these options existed used the older defaults
    args.class_head = getattr(args, "class_head", "mean")
    args.feature_norm = getattr(args, "feature_norm", "running")
    args.layout = getattr(args, "layout", "anet")
    args.window = getattr(args, "window", None)
    encoder, detector = build_models(args, state["in_channels"], len(state["classes"]))
    try:
        encoder.load_state_dict(state["encoder"])
        detector.load_state_dict(state["detector"])
    except (RuntimeError, TypeError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        fail(f"--model {path}: its weights do not fit the model its arguments describe "
             f"({first}); the file is damaged or was edited, pass the model.pt that training "
             "wrote")  # fmt: skip
    return args, encoder, detector, list(state["classes"])


#: The stored arguments a ``model.pt`` must hold, with the range a training run can give
#: (decoding and the detector's [T, T] maps grow with them: an edited file must not make
#: predict allocate gigabytes).
STORED_RANGES = {"snippet_length": (1, 512), "size": (8, 1024), "micro_batch_size": (1, 4096),
                 "num_snippets": (1, 1024), "window": (1, 1024)}  # fmt: skip


def check_stored_args(path: Path, state: dict[str, Any]) -> None:
    """Refuse a ``model.pt`` whose stored arguments a training run cannot have written."""
    args, classes, channels = state["args"], state["classes"], state["in_channels"]

    def bad(what: str) -> None:
        fail(f"--model {path}: {what}; the file is damaged or was edited, pass the model.pt "
             "that training wrote")  # fmt: skip

    if not isinstance(args, dict):
        bad(f"its 'args' entry is a {type(args).__name__}, not a dict")
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) for c in classes)
    ):
        bad("its 'classes' entry is not a non-empty list of class names")
    if channels is not None and (type(channels) is not int or not 1 <= channels <= 65536):
        bad(f"in_channels is {channels!r}, expected None or an int in [1, 65536]")
    layout = args.get("layout", "anet")
    if layout not in LAYOUTS:
        bad(f"layout is {layout!r}, expected one of {list(LAYOUTS)}")
    required = ["snippet_length", "size", "micro_batch_size"]
    required.append("window" if layout == "thumos" else "num_snippets")
    for key in required:
        lo, hi = STORED_RANGES[key]
        value = args.get(key)
        if type(value) is not int or not lo <= value <= hi:
            bad(f"its argument {key} is {value!r}, expected an int in [{lo}, {hi}]")
    for key, allowed in (("encoder", ENCODERS), ("class_head", CLASS_HEADS),
                         ("feature_norm", FEATURE_NORMS)):  # fmt: skip
        if key in args and args[key] not in allowed:
            bad(f"its argument {key} is {args[key]!r}, expected one of {sorted(allowed)}")
    ratio = args.get("aps_ratio", 0.06)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        bad(f"its argument aps_ratio is {ratio!r}, expected a number in (0, 1]")


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
        atomic_write_json(a.output, summary)
    return summary


def predict(argv: list[str]) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="etad_anet.py predict",
                                description="Detect actions in one video file.")  # fmt: skip
    p.add_argument("video", type=Path)
    p.add_argument("--model", type=Path, default=Path("outputs/etad_anet/model.pt"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--top", type=int, default=10, help="segments printed")
    a = p.parse_args(argv)
    if a.top < 1:
        p.error(f"--top must be >= 1 (the number of segments printed); got {a.top}")
    if not a.video.is_file():
        p.error(f"no video file at {a.video}")
    if not a.model.is_file():
        p.error(f"no model at {a.model}: train first (python examples/etad_anet.py)")
    args, encoder, detector, classes = load_model(a.model, a.device)
    try:
        info = probe_media(a.video, "video")
    except Exception as err:  # PyAV's errors for a file that is not a video vary by format
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fail(f"{a.video} is not a video file that can be read ({type(err).__name__}: {first}); "
             "pass a video such as an .mp4")  # fmt: skip
    if info.num_frames < 1 or not info.fps or info.height < 1 or info.width < 1:
        fail(f"{a.video} holds no readable video frames (probed {info.num_frames} frames at "
             f"{info.fps} fps, {info.width}x{info.height}); pass a video file")  # fmt: skip
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
    duration = info.num_frames / info.fps
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
                            a.video.stem, duration, float(info.fps),
                            (frames.float().mean(dim=1) + 0.5) / info.fps)  # fmt: skip
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
