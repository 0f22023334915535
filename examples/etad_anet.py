"""Train ETAD end to end with SGS on ActivityNet-format data, evaluate it, and predict.

With no arguments it generates (or reuses) the embedded synthetic data set, pretrains (or
reuses) the small 3D-CNN encoder as a clip classifier on the synthetic clip set
(``examples/pretrain_encoder.py``; ``--pretrained none`` trains it from scratch), fine-tunes it
and ETAD end to end with SGS (γ = 0.3, K = 4, APS 6 %), evaluates with the ActivityNet protocol
and writes everything into ``--output-dir``::

    python examples/etad_anet.py                            # train + evaluate
    python examples/etad_anet.py --ratio 1.0 --epochs 4      # other settings
    torchrun --nproc_per_node=2 examples/etad_anet.py        # DDP (gloo on CPU)
    python examples/etad_anet.py predict VIDEO.mp4 --model outputs/etad_anet/model.pt
    python examples/etad_anet.py evaluate --model outputs/etad_anet/model.pt --subset training
    python examples/etad_anet.py --layout thumos             # THUMOS-like: sliding windows

``--layout thumos`` is the THUMOS-14 setting of the paper (Table 11) on synthetic data: several
classes and many short instances per video (``data/synthetic-thumos``), snippets back to back
at a fixed stride instead of a fixed number per video, training and evaluation on sliding
windows of ``--window`` snippets (half a window apart; a window's detections are shifted to
video time and the windows of a video merged by soft-NMS per class), and mAP at tIoU
0.3:0.1:0.7.

Outputs: ``predictions.json`` (ActivityNet results format), ``metrics.json``,
``predictions.png`` (detections against ground truth), ``metrics.jsonl`` and TensorBoard logs,
``checkpoints/`` (``--resume`` continues from the newest one) and ``model.pt`` for ``predict``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from etad import ETADConfig
from etad.detections import to_detections
from etad.detector import CLASS_HEADS, FEATURE_NORMS, Detector
from etad.plots import plot_predictions
from pretrain_encoder import PretrainConfig, default_checkpoint, pretrain_encoder
from sgs_tad import EndToEnd, Engine, SequentializedGradientSampler, SGSTrainer, StepInfo
from sgs_tad.data import (
    ActivityNetDataset,
    VideoSample,
    WindowedDataset,
    generate_synthetic_dataset,
    sliding_windows,
    synthetic_video_dir,
    window_sample,
)
from sgs_tad.data.snippets import MediaSnippetSource, draw_crop, snippet_frame_indices
from sgs_tad.data.video import probe_media
from sgs_tad.detection.postprocess import merge_window_detections
from sgs_tad.encoders import ENCODERS, build_encoder, freeze_encoder
from sgs_tad.engine.sources import NonFiniteSnippetsError
from sgs_tad.evaluation import (
    ACTIVITYNET_TIOU_THRESHOLDS,
    THUMOS_TIOU_THRESHOLDS,
    evaluate_detection,
    format_results,
)
from sgs_tad.training.callbacks import Callback, GradientStats
from sgs_tad.training.distributed import (
    DDP_TIMEOUT_ENV,
    DEFAULT_DDP_TIMEOUT_S,
    barrier,
    init_distributed,
)
from sgs_tad.training.optimization import adamw, step_decay, warmup_cosine

log = logging.getLogger("etad_anet")

#: ``--pretrained`` when not given: "auto" pretrains small3d on the synthetic clip set first
#: (examples/pretrain_encoder.py, cached) and fine-tunes it, as the paper fine-tunes a
#: Kinetics-pretrained encoder; "none" trains it from scratch (the default before the pilot of
#: docs/results.md, where end to end beat frozen on every seed only from the pretrained one).
PRETRAINED_DEFAULT = "auto"

LAYOUTS = ("anet", "thumos")
#: ``--layout thumos``: the synthetic set (``generate_synthetic_dataset`` options) and the
#: defaults that differ from the ActivityNet layout. 12-16 s videos of 48-64 snippets give 2-3
#: windows of 32 (about 2.7): 24 training videos make a little fewer windows per epoch than the
#: ActivityNet layout has videos (72), so a run costs about the same (12-20 s gave 86 windows,
#: 4.5 minutes on one core against 3-4 for the ActivityNet layout).
THUMOS = {
    "data_root": Path("data/synthetic-thumos"),
    "num_videos": 48,
    "window": 32,
    "min_duration": 12.0,
    "max_duration": 16.0,
}
ANET_DATA_ROOT = Path("data/synthetic")
ANET_NUM_VIDEOS = 144
ANET_NUM_SNIPPETS = 32


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = p.add_argument_group("data")
    data.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="anet",
        help="anet: one class and a few long instances per video, resized to --num-snippets; "
        "thumos: several classes and many short instances per video, snippets at a fixed "
        "stride, sliding windows of --window snippets (the paper's THUMOS-14 setting)",
    )
    data.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="videos (or features) folder; the synthetic set is written here (default "
        f"{ANET_DATA_ROOT}, with --layout thumos {THUMOS['data_root']})",
    )
    data.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="ActivityNet annotation JSON (default: the synthetic set's)",
    )
    data.add_argument(
        "--features",
        type=Path,
        default=None,
        help="folder of pre-extracted .npy [T, C] features: frozen-encoder mode",
    )
    data.add_argument(
        "--num-videos",
        type=int,
        default=None,
        help=f"synthetic set size (default {ANET_NUM_VIDEOS}, with --layout thumos "
        f"{THUMOS['num_videos']})",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.5,
        help="share of the synthetic set in the validation subset (the default 72 validation "
        "videos put the standard error of a setting's mean average mAP under a point, see "
        "docs/results.md)",
    )
    data.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of the synthetic set (--seed seeds the training only)",
    )
    data.add_argument(
        "--num-snippets",
        type=int,
        default=None,
        help=f"T, snippets per video (default {ANET_NUM_SNIPPETS}; --layout anet only)",
    )
    data.add_argument(
        "--window",
        type=int,
        default=None,
        help=f"--layout thumos: snippets per sliding window, the detector's T (default "
        f"{THUMOS['window']}; windows start every half window)",
    )
    data.add_argument("--snippet-length", type=int, default=4, help="L, frames per snippet")
    data.add_argument("--size", type=int, default=32, help="frame size after cropping")
    model = p.add_argument_group("model")
    model.add_argument("--encoder", default="small3d", choices=sorted(ENCODERS))
    model.add_argument("--weights", type=Path, default=None, help="local encoder checkpoint")
    model.add_argument(
        "--pretrained",
        default=PRETRAINED_DEFAULT,
        metavar="{auto,none,PATH}",
        help="encoder initialisation: 'auto' pretrains small3d as a clip classifier on the "
        "synthetic clip set (examples/pretrain_encoder.py; cached in data/pretrain/) and loads "
        "it as --weights would, when training on the synthetic set (no --annotations); 'none' "
        "starts from scratch; a PATH is --weights PATH "
        f"(default {PRETRAINED_DEFAULT!r}). With --features, extract them with the same "
        "encoder: python -m sgs_tad.extract --encoder small3d --weights data/pretrain/small3d.pt",
    )
    model.add_argument(
        "--feature-norm",
        choices=FEATURE_NORMS,
        default="running",
        help="detector input normalisation: running per-channel statistics, or LayerNorm",
    )
    model.add_argument(
        "--class-head",
        choices=CLASS_HEADS,
        default="snippet",
        help="classifier of the class fusion: per snippet (dense), or per video with attention "
        "or mean pooling",
    )
    model.add_argument(
        "--frozen-stages",
        type=int,
        default=None,
        help="encoder stages frozen (default: 2 for tsm/r2plus1d, as the paper; small3d: "
        "-1 from scratch, 1 pretrained, the stem and the first of its three stages)",
    )
    sgs = p.add_argument_group("SGS and APS")
    sgs.add_argument("--ratio", type=float, default=0.3, help="γ, snippet gradient ratio")
    sgs.add_argument("--micro-batch-size", type=int, default=4, help="K")
    sgs.add_argument(
        "--encode-batch-size",
        type=lambda v: v if v == "auto" else None if v == "k" else int(v),
        default="auto",
        help="snippets per no-grad phase-1 call for unsampled snippets ('auto': measured on the "
        "first batch, at most 8 K; 'k': K)",
    )
    sgs.add_argument(
        "--keep-graphs",
        type=lambda v: int(v) if v.isdigit() else v,
        default=0,
        help="keep phase-1 graphs of sampled snippets: 0, a snippet count, 'all' or e.g. 1GB",
    )
    sgs.add_argument(
        "--decode-cache-mb",
        type=float,
        default=256.0,
        help="decode a video once per batch when its snippets fit in this many MB (0: off)",
    )
    sgs.add_argument(
        "--prefetch",
        choices=("auto", "on", "off"),
        default="auto",
        help="decode the next micro-batch in a background thread",
    )
    sgs.add_argument(
        "--grad-scale",
        choices=("none", "unbiased"),
        default="none",
        help="'unbiased' multiplies the sampled snippets' feature gradients by N/n",
    )
    sgs.add_argument("--snippet-sampler", default="random")
    sgs.add_argument("--proposal-sampler", default="random")
    sgs.add_argument("--aps-ratio", type=float, default=0.06)
    sgs.add_argument(
        "--naive",
        action="store_true",
        help="plain end-to-end backprop (all snippets in one graph), for comparison",
    )
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=1)
    train.add_argument(
        "--encoder-lr",
        type=float,
        default=None,
        help="default 2e-4 for the from-scratch small3d, --detector-lr / 100 for a pretrained "
        "one (10x the paper's ratio, measured in docs/results.md), 1e-6 for tsm/r2plus1d",
    )
    train.add_argument("--detector-lr", type=float, default=2e-3)
    train.add_argument(
        "--schedule",
        choices=("cosine", "step"),
        default="cosine",
        help="cosine: per-step cosine decay with warm-up; step: x0.1 after 5/6 of the epochs",
    )
    train.add_argument(
        "--encoder-delay",
        type=float,
        default=None,
        help="epochs the encoder waits (lr 0) while the detector settles; then it warms up over "
        "one epoch, as every group does at the start (cosine schedule; default 1 for the "
        "from-scratch small3d, else 0)",
    )
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument(
        "--ddp-timeout",
        type=float,
        default=None,
        help="seconds a rank waits in a collective before failing with the ranks that did not "
        f"answer (torchrun runs; default ${DDP_TIMEOUT_ENV}, else {DEFAULT_DDP_TIMEOUT_S:.0f})",
    )
    train.add_argument("--output-dir", type=Path, default=Path("outputs/etad_anet"))
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument(
        "--resume-override",
        action="store_true",
        help="with --resume, accept settings that differ from the checkpoint's (logged)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    check_layout(p, args)
    if args.features is not None and args.annotations is None:
        p.error("--features needs --annotations (the annotation JSON of those videos)")
    if args.naive and args.features is not None:
        p.error("--naive trains the encoder; it makes no sense with --features")
    if args.pretrained not in ("auto", "none"):
        if args.weights is not None and Path(args.pretrained) != args.weights:
            p.error(
                f"--pretrained {args.pretrained} and --weights {args.weights} name two "
                "checkpoints; pass one of them"
            )
        if not Path(args.pretrained).is_file():
            p.error(
                f"--pretrained {args.pretrained}: no such file; pass 'auto', 'none' or the "
                "path of an encoder checkpoint (python examples/pretrain_encoder.py writes one)"
            )
    for flag in ("batch_size", "epochs", "num_videos", "micro_batch_size", "num_snippets",
                 "snippet_length", "size", "window"):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1; got {value}")
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction must be between 0 and 1 (exclusive); got {args.val_fraction}")
    if args.ddp_timeout is not None and not 0 < args.ddp_timeout < math.inf:
        p.error(f"--ddp-timeout must be a number of seconds > 0; got {args.ddp_timeout}")
    delay = args.encoder_delay
    if delay is not None:
        if args.schedule != "cosine":
            p.error(
                f"--encoder-delay {delay} needs --schedule cosine (the step schedule has no "
                "hold); drop one of them"
            )
        if not (math.isfinite(delay) and 0 <= delay < args.epochs):
            p.error(
                f"--encoder-delay must be a number of epochs in [0, --epochs = {args.epochs}); "
                f"got {delay} (at --epochs or more the encoder would never train)"
            )
    return resolve_defaults(args)


def check_layout(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the options of the other layout; fill in the layout's defaults."""
    if args.layout == "thumos":
        if args.num_snippets is not None:
            p.error(
                f"--num-snippets {args.num_snippets} resizes every video to that many snippets "
                "(--layout anet); --layout thumos takes snippets at a fixed stride and cuts "
                "them into windows: pass --window instead"
            )
        if args.features is not None:
            p.error(
                "--layout thumos cuts videos into windows of snippets; with --features pass "
                "--layout anet"
            )
        defaults = {k: THUMOS[k] for k in ("data_root", "num_videos", "window")}
    else:
        if args.window is not None:
            p.error(
                f"--window {args.window} is the size of a --layout thumos sliding window; "
                "--layout anet resizes every video to --num-snippets: pass that, or add "
                "--layout thumos"
            )
        defaults = {"data_root": ANET_DATA_ROOT, "num_videos": ANET_NUM_VIDEOS,
                    "num_snippets": ANET_NUM_SNIPPETS}  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def temporal_scale(args: argparse.Namespace) -> int:
    """The detector's T: snippets per video (anet) or per window (thumos)."""
    return int(args.window if args.layout == "thumos" else args.num_snippets)


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    """The ``examples/pretrain_encoder.py`` recipe of ``--pretrained auto`` for these snippets."""
    return PretrainConfig(encoder=args.encoder, snippet_length=args.snippet_length,
                          size=args.size)  # fmt: skip


def pretrains(args: argparse.Namespace) -> bool:
    """Whether the run pretrains (or reuses) the small3d clip classifier before training."""
    return args.pretrained == "auto" and args.weights_from_pretrained


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on other options, decided here and nowhere else.

    ``--pretrained auto`` (small3d on the synthetic set, no ``--weights``) sets ``--weights``
    to the cached clip-classifier checkpoint, ``--pretrained PATH`` to ``PATH``; on other data
    ``auto`` leaves the encoder as it is (the clip set is the synthetic set's pretraining).

    A from-scratch ``small3d`` (no ``--weights``) trains every stage at a high rate after a
    one-epoch hold; a pretrained encoder keeps its first stages frozen (the paper fixes two of
    TSM's four; one of small3d's three) and fine-tunes without a hold: TSM and R(2+1)D at the
    paper's 1e-6, a pretrained small3d at a hundredth of the detector's rate. The paper's ratio
    is a thousandth (1e-6 / 1e-3, with about 20x our number of steps); at that ratio every
    end-to-end setting of the pilot in docs/results.md scored below the frozen encoder, at a
    hundredth SGS γ = 0.3 scored above it on every seed.
    """
    args.weights_from_pretrained = False
    if args.weights is None and args.features is None:
        synthetic = args.annotations is None
        if args.pretrained == "auto" and args.encoder == "small3d" and synthetic:
            args.weights = default_checkpoint(pretrain_config(args))
            args.weights_from_pretrained = True
        elif args.pretrained not in ("auto", "none"):
            args.weights = Path(args.pretrained)
    scratch = args.encoder == "small3d" and args.weights is None
    if args.frozen_stages is None:
        if args.encoder == "small3d":
            args.frozen_stages = -1 if scratch else 1
        else:
            args.frozen_stages = 2
    if args.encoder_lr is None:
        if scratch:
            args.encoder_lr = 2e-4
        elif args.encoder == "small3d":
            args.encoder_lr = args.detector_lr / 100
        else:  # the paper's TSM rate
            args.encoder_lr = 1e-6
    if args.encoder_delay is None and args.schedule == "cosine":
        args.encoder_delay = 1.0 if scratch else 0.0
    return args


# ----------------------------------------------------------------------------------- setup


def setup_distributed(device: str, timeout: float | None = None) -> tuple[int, int]:
    """Join the process group when started by torchrun; single-process runs need none.

    A collective that waits more than ``timeout`` seconds (``--ddp-timeout``, default
    ``$SGS_TAD_DDP_TIMEOUT`` or 600) fails, naming the rank(s) that did not answer.
    """
    try:
        return init_distributed(device=device, timeout=timeout)
    except ValueError as err:  # a bad $SGS_TAD_DDP_TIMEOUT
        fail(str(err))


def check_device(device: str) -> None:
    """Refuse a ``--device`` this machine does not have, before anything is built."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        fail(f"--device {device!r} is not a torch device; pass cpu, cuda or cuda:N")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            fail(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() "
                 "is False); pass --device cpu")  # fmt: skip
        if dev.index is not None and dev.index >= count:
            fail(f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0 to "
                 f"cuda:{count - 1}); pass one of them or --device cpu")  # fmt: skip


def data_paths(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """(annotation file, media root, mode) of the run's arguments."""
    if args.features is not None:
        return Path(args.annotations), Path(args.features), "features"
    if args.annotations is not None:
        return Path(args.annotations), Path(args.data_root), "video"
    ann = Path(args.data_root) / "annotations.json"
    return ann, synthetic_video_dir(ann), "video"


def prepare_data(args: argparse.Namespace, rank: int) -> tuple[Path, Path, str]:
    """:func:`data_paths`; rank 0 first generates the synthetic set if it is the one used."""
    if args.features is None and args.annotations is None:
        if rank == 0:
            log.info("synthetic data set: %s (%d videos)", args.data_root, args.num_videos)
            generate_synthetic_dataset(args.data_root, **synthetic_options(args))
        barrier("waiting for rank 0 to generate the synthetic data set")
    if pretrains(args):
        if rank == 0:
            log.info("pretrained encoder: %s", args.weights)
            pretrain_encoder(pretrain_config(args), args.weights)
        barrier("waiting for rank 0 to pretrain the encoder")
    return data_paths(args)


def synthetic_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate_synthetic_dataset`` options of the run's synthetic set (its layout's)."""
    options: dict[str, Any] = dict(num_videos=args.num_videos, seed=args.data_seed,
                                   val_fraction=args.val_fraction)  # fmt: skip
    if args.layout == "thumos":
        options.update(classes_per_video="mixed", instances="many",
                       min_duration=THUMOS["min_duration"],
                       max_duration=THUMOS["max_duration"])  # fmt: skip
    return options


def dataset_options(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    # thumos: num_snippets=None takes snippets back to back (a fixed stride of
    # --snippet-length frames), however long the video
    thumos = args.layout == "thumos"
    return dict(mode=mode, num_snippets=None if thumos else args.num_snippets,
                snippet_length=args.snippet_length, size=args.size, mean=(0.5,) * 3,
                std=(0.25,) * 3,
                decode_cache_bytes=int(getattr(args, "decode_cache_mb", 256) * 2**20))  # fmt: skip


def windowed(args: argparse.Namespace, dataset: ActivityNetDataset, *, training: bool) -> Any:
    """``dataset`` itself (anet), or its sliding windows (thumos; training: those with an action).

    Every video must hold one window: the detector's T is fixed.
    """
    if args.layout != "thumos":
        return dataset
    short = [(dataset.videos[i].video_id, dataset.num_snippets_of(i)) for i in range(len(dataset))
             if dataset.num_snippets_of(i) < args.window]  # fmt: skip
    if short:
        vid, n = short[0]
        fail(f"{len(short)} video(s) have fewer snippets than one --window {args.window} (first: "
             f"{vid!r}, {n} snippets of {args.snippet_length} frames); lower --window or "
             "--snippet-length, or use longer videos")  # fmt: skip
    return WindowedDataset(dataset, window=args.window, stride=max(1, args.window // 2),
                           drop_empty=training)  # fmt: skip


def build_models(args: argparse.Namespace, in_channels: int | None, num_classes: int):
    if in_channels is not None:  # features mode: the "encoder" is the identity, frozen
        encoder: nn.Module = nn.Identity()
        channels = in_channels
    else:
        encoder = build_encoder(args.encoder, weights=args.weights)
        frozen = args.frozen_stages
        if args.encoder != "small3d" or frozen >= 0:
            encoder = freeze_encoder(encoder, frozen_stages=frozen)
        channels = encoder.out_channels
    config = ETADConfig.small(
        in_channels=channels,
        temporal_scale=temporal_scale(args),
        max_duration=temporal_scale(args),
        aps_ratio=args.aps_ratio,
        aps_strategy=args.proposal_sampler,
    )
    detector = Detector(
        config,
        num_classes,
        feature_norm=args.feature_norm,
        class_head=args.class_head,
    )
    return encoder.to(args.device), detector.to(args.device)


def collate(samples: list[Any]) -> dict[str, list[Any]]:
    return {
        "snippets": [s.source for s in samples],
        "segments": [s.segments for s in samples],
        "labels": [s.labels for s in samples],
        "video_ids": [s.video_id for s in samples],
        "durations": [s.duration for s in samples],
    }


class EpochSetter(Callback):
    """Redraw the random crops every epoch (the data set's crops depend on its epoch)."""

    def __init__(self, dataset: ActivityNetDataset | WindowedDataset) -> None:
        self.dataset = dataset

    def on_epoch_start(self, trainer: SGSTrainer, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def detector_step(detector: Detector):
    """The trainer's detector step: ETAD's losses with APS plus the class head's."""

    def step(feats: torch.Tensor, batch: dict[str, list[Any]], info: StepInfo) -> Any:
        # info.generator is derived from (seed, step, rank): reproducible, and a resumed run
        # draws exactly the APS subsets the uninterrupted one would have.
        return detector(feats, batch["segments"], batch["labels"], generator=info.generator)

    return step


def make_scheduler(args: argparse.Namespace, num_videos: int, world: int, encoder: nn.Module):
    """The ``--schedule`` factory: per-step cosine with the encoder hold, or step decay."""
    if args.schedule != "cosine":
        return step_decay(milestones=(max(1, round(args.epochs * 5 / 6)),))
    steps_per_epoch = math.ceil(num_videos / (args.batch_size * world))
    # no encoder group when nothing in it trains (features mode, every stage frozen)
    trains = any(p.requires_grad for p in encoder.parameters())
    delay = {"encoder": round(args.encoder_delay * steps_per_epoch)} if trains else {}
    return warmup_cosine(total_steps=max(1, args.epochs * steps_per_epoch),
                         warmup_steps=steps_per_epoch, delay_steps=delay)  # fmt: skip


def make_engine(args: argparse.Namespace, encoder: nn.Module, mode: str) -> Engine:
    """SGS (frozen in features mode), or plain end-to-end backprop for ``--naive``."""
    if args.naive:
        return EndToEnd(encoder, device=args.device)
    ratio = 0.0 if mode == "features" else args.ratio
    prefetch = {"auto": "auto", "on": True, "off": False}[args.prefetch]
    return SequentializedGradientSampler(encoder, micro_batch_size=args.micro_batch_size,
                                         encode_batch_size=args.encode_batch_size,
                                         keep_graphs=args.keep_graphs, prefetch=prefetch,
                                         ratio=ratio, sampler=args.snippet_sampler,
                                         grad_scale=args.grad_scale,
                                         on_nonfinite_grad="skip", device=args.device)  # fmt: skip


# The settings a resume must share with the run it continues (--resume-override accepts a change).
RESUME_SETTINGS = ("seed", "data_seed", "num_videos", "num_snippets", "snippet_length", "size",
                   "encoder", "weights", "epochs", "batch_size", "ratio", "micro_batch_size",
                   "snippet_sampler", "proposal_sampler", "aps_ratio", "naive", "encoder_lr",
                   "detector_lr", "schedule", "encoder_delay", "frozen_stages", "class_head",
                   "feature_norm", "annotations", "features", "data_root",
                   "pretrained", "val_fraction", "grad_scale", "layout", "window")  # fmt: skip


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k in RESUME_SETTINGS}  # fmt: skip
    if settings.get("layout") == "anet":
        # checkpoints written before --layout existed are all anet runs: without these keys
        # their settings still match, and they resume
        settings.pop("layout")
        settings.pop("window", None)
    return settings


# -------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def predict_videos(
    encoder: nn.Module, detector: Detector, sources: list[Any], k: int, device: str
) -> tuple[list[Any], torch.Tensor]:
    """Detections and class scores of videos: phase 1 alone (no graph, no sample), then ETAD."""
    encoder.eval()
    detector.eval()
    engine = SequentializedGradientSampler(encoder, micro_batch_size=k, device=device)
    return detector.predict(engine.encode_features(sources))


EVALUATION_VERSION = 2  # 2: class-agnostic mAP from detections made without class fusion


def evaluate(
    args, encoder, detector, dataset, ann: Path, classes: list[str], subset: str = "validation"
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
    for start in range(0, len(items), args.batch_size):
        samples = [items[i] for i in range(start, min(start + args.batch_size, len(items)))]
        preds, probs = predict_videos(
            encoder, detector, [s.source for s in samples], args.micro_batch_size, args.device
        )
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


# ----------------------------------------------------------------------------------- train


def fail(message: str) -> NoReturn:
    """A one-line error on stderr and exit code 2, as argparse does for bad options."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(args: argparse.Namespace) -> dict[str, Any]:
    check_device(args.device)
    rank, world = setup_distributed(args.device, args.ddp_timeout)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")  # fmt: skip
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ann, root, mode = prepare_data(args, rank)
    common = dataset_options(args, mode)
    try:  # the data layer's errors name the file or video and the fix: say them in one line
        train_set = ActivityNetDataset(ann, root, subset="training", training=True,
                                       seed=args.seed, **common)  # fmt: skip
        val_set = ActivityNetDataset(ann, root, subset="validation", classes=train_set.classes,
                                     **common)  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if len(val_set) == 0:
        fail(
            f"{ann} has no videos in the validation subset, so the run could not be "
            'evaluated after training. Give some videos "subset": "validation" in the '
            "annotations (the synthetic set has them), or check the annotation file."
        )
    # thumos: every item is a window of a video (those with an action, for training)
    train_items = windowed(args, train_set, training=True)
    if train_items is not train_set:
        log.info("%d training windows of %d snippets from %d videos", len(train_items),
                 args.window, len(train_set))  # fmt: skip
    in_channels = None
    if mode == "features":
        in_channels = int(train_set[0].features.shape[1])
    encoder, detector = build_models(args, in_channels, len(train_set.classes))
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    if args.resume and not any(checkpoints.glob("checkpoint-*.pt")):
        log.warning("--resume: no checkpoint in %s; training from scratch", checkpoints)
    # each part's gradient norm and update size per step: metrics.jsonl, medians in metrics.json
    grad_stats = GradientStats({"encoder": encoder, "detector": detector})
    trainer = SGSTrainer(
        make_engine(args, encoder, mode),
        detector,
        detector_step=detector_step(detector),
        optimizer=adamw(encoder_lr=args.encoder_lr, detector_lr=args.detector_lr),
        scheduler=make_scheduler(args, len(train_items), world, encoder),
        max_grad_norm=5.0,
        seed=args.seed,
        settings=run_settings(args),
        checkpoint_dir=checkpoints,
        log_dir=out,
        tensorboard=True,
        progress=not args.no_progress,
        log_every=1,
        callbacks=[EpochSetter(train_items), grad_stats],
    )
    t_train, cpu_train = time.perf_counter(), time.process_time()
    try:
        fit = trainer.fit(train_items, epochs=args.epochs, batch_size=args.batch_size,
                          collate_fn=collate, resume=args.resume,
                          resume_override=args.resume_override)  # fmt: skip
    except ValueError as err:
        if "other settings" in str(err):  # a resume that would silently change the run
            fail(str(err))
        raise
    except FloatingPointError as err:  # a run that stopped learning: say it in one line
        fail(f"training stopped at step {trainer.step}: {err} The last checkpoint is in "
             f"{checkpoints}.")  # fmt: skip
    train_time = time.perf_counter() - t_train
    train_cpu_time = time.process_time() - cpu_train  # all threads: robust to a busy machine
    if dist.is_initialized():
        # Every rank leaves the process group together, before rank 0 evaluates alone: a rank
        # that tears its group down while another still uses it can abort the process, and a
        # barrier after the evaluation could outlast the collective timeout.
        barrier("waiting for every rank to finish training")
        dist.destroy_process_group()
    summary: dict[str, Any] = {}
    if rank == 0:
        try:
            ev = evaluate(args, encoder, detector, val_set, ann, list(train_set.classes))
        except FloatingPointError as err:  # a model that diverged: say it in one line
            fail(f"evaluation stopped: {err} {fit['skipped_steps']} of {fit['step']} training "
                 "steps were skipped (non-finite); lower the learning rates.")  # fmt: skip
        (out / "predictions.json").write_text(json.dumps(ev["predictions"]))
        torch.save(
            {"encoder": encoder.state_dict(), "detector": detector.state_dict(),
             "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "classes": list(train_set.classes), "in_channels": in_channels},
            out / "model.pt",
        )  # fmt: skip
        summary = {
            **evaluation_summary(ev),
            "peak_memory_mb": peak_memory_mb(args.device),
            "train_time_s": train_time,
            "train_cpu_time_s": train_cpu_time,
            "total_time_s": time.perf_counter() - t0,
            "steps": fit["step"],
            "skipped_steps": fit["skipped_steps"],
            "bad_videos": fit["bad_videos"],
            "phases": fit["phases"],
            "grad_stats": grad_stats.summary(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "world_size": world,
        }
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        try:
            plot_predictions(val_set, ev["predictions"], out / "predictions.png", num_videos=4)
        except ImportError as err:
            log.warning("no plot: %s (pip install 'sgs_tad[plot]')", err)
        print_evaluation(summary)
        print(
            f"peak memory {summary['peak_memory_mb']:.0f} MB ({args.device}), training "
            f"{train_time:.0f} s, total {summary['total_time_s']:.0f} s; outputs in {out}"
        )
    return summary


# --------------------------------------------------------------------------------- predict


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
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
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
        for lo, hi in sliding_windows(n, window=args.window, stride=max(1, args.window // 2)):
            w = window_sample(video, lo, hi)
            preds, probs = predict_videos(encoder, detector, [w.source], args.micro_batch_size,
                                          a.device)  # fmt: skip
            windows.append(to_detections(preds[0], duration=w.duration, offset=w.offset,
                                         class_scores=probs[0], class_names=classes))  # fmt: skip
        dets = merge_window_detections(windows)
    for d in dets[: a.top]:
        print(f"{d['segment'][0]:7.2f} s - {d['segment'][1]:7.2f} s  {d['label']:<12s} "
              f"score {d['score']:.3f}")  # fmt: skip
    return dets


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["predict"]:
            predict(argv[1:])
        elif argv[:1] == ["evaluate"]:
            evaluate_command(argv[1:])
        else:
            train(parse_args(argv))
    except NonFiniteSnippetsError as err:  # NaN/inf inputs: name the video, not the loss
        fail(str(err))


if __name__ == "__main__":
    main()
