"""The main job's command line: its options, their checks and the defaults that follow from them.

:func:`parse_args` reads ``examples/etad_anet.py``'s options, refuses bad ones (and those of the
other ``--layout``) with argparse's one-line error, and :func:`resolve_defaults` decides the
defaults that depend on other options. :func:`run_settings` are the settings a ``--resume``
must share with the run it continues; :func:`fail` is the one-line error of the later checks.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from pretrain_encoder import PRETRAINABLE, PretrainConfig, default_checkpoint, recipe
from sgs_tad.encoders import ENCODERS
from sgs_tad.engine.memory import parse_bytes
from sgs_tad.engine.prefix import DEFAULT_PREFIX_BUDGET, parse_prefix_budget
from sgs_tad.training.distributed import DDP_TIMEOUT_ENV, DEFAULT_DDP_TIMEOUT_S

from .detector import CLASS_HEADS, FEATURE_NORMS

#: The job's description (``--help``): the first line of ``examples/etad_anet.py``'s docstring.
DESCRIPTION = (
    "Train ETAD end to end with SGS on ActivityNet-format data, evaluate it, and predict."
)


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

#: The ViT encoders (VideoMAE): fully fine-tuned by default (``--frozen-stages -1``, AdaTAD's
#: ``fullft``), and fed snippets of their own default size.
VIT_ENCODERS = tuple(sorted(name for name in ENCODERS if name.startswith("videomae")))
#: ``(--snippet-length, --size)`` when not given. The tiny preset (patch 8, pretraining grid 4
#: frames x 32 px) and the CNNs take 4 frames at 32 px (videomae_tiny: 2 x 4 x 4 = 32 tokens);
#: the other ViTs (patch 16, tubelet 2) 8 frames at 48 px, the synthetic videos' frame size
#: (4 x 3 x 3 = 36 tokens; at 32 px they would see 2 x 2 patches).
SNIPPET_DEFAULTS = {"videomae_tiny": (4, 32), **{n: (8, 48) for n in VIT_ENCODERS
                    if n != "videomae_tiny"}}  # fmt: skip
CNN_SNIPPET = (4, 32)
#: The encoder rate of a pretrained ViT (``--weights``, ``--pretrained PATH``): AdaTAD's full
#: fine-tuning (``fullft``) backbone rate for Kinetics-pretrained VideoMAE.
VIT_PRETRAINED_LR = 1e-5
#: The encoder rate of a ViT from ``--pretrained auto``: the synthetic clip pretraining is far
#: weaker than Kinetics (videomae_tiny: 69 % held-out), and the main job's default run scored
#: 30.6 average mAP at 1e-5 against 51.6 at 2e-4 (one run each, docs/encoders.md).
VIT_AUTO_LR = 2e-4


def _prefix_budget(value: str) -> bool | int | str:
    """``--reuse-frozen-prefix``: 'off', 'all', a snippet count or a size."""
    budget: bool | int | str = (
        False if value == "off" else int(value) if value.isdigit() else value
    )
    try:
        parse_prefix_budget(budget)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} ('off' turns it off)") from None
    return budget


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION)
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
    data.add_argument(
        "--snippet-length",
        type=int,
        default=None,
        help=f"L, frames per snippet (default {CNN_SNIPPET[0]}; the ViTs but videomae_tiny: "
        f"{SNIPPET_DEFAULTS['videomae_s'][0]}, a multiple of their tubelet of 2 frames)",
    )
    data.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"frame size after cropping (default {CNN_SNIPPET[1]}, the tiny ViT's patch-8 "
        f"grid of 4 x 4; the ViTs but videomae_tiny: {SNIPPET_DEFAULTS['videomae_s'][1]}, "
        "3 x 3 patches of 16 px)",
    )
    model = p.add_argument_group("model")
    model.add_argument("--encoder", default="small3d", choices=sorted(ENCODERS))
    model.add_argument("--weights", type=Path, default=None, help="local encoder checkpoint")
    model.add_argument(
        "--pretrained",
        default=PRETRAINED_DEFAULT,
        metavar="{auto,none,PATH}",
        help="encoder initialisation: 'auto' pretrains the encoder (small3d, videomae_tiny; "
        "videomae_s slowly; the others start from scratch) as a clip classifier on the "
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
        "-1 from scratch, 1 pretrained, the stem and the first of its three stages; the "
        "ViTs: -1, full fine-tuning as AdaTAD's fullft; a ViT's stage 0 is its patch "
        "embedding, stage k its k-th block)",
    )
    model.add_argument(
        "--checkpoint-blocks",
        action="store_true",
        help="ViT encoders: per-block activation checkpointing inside each snippet (recompute "
        "a block's activations in the backward). With SGS, the setting for the largest "
        "models, where one snippet's activations are already large (docs/benchmarks.md)",
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
        "--memory-budget",
        default=None,
        help="bytes one micro-batch's encoder activations may take, e.g. 2GB: K and the "
        "phase-1 call size are then chosen by the library's probe (micro_batch_size='auto'), "
        "replacing --micro-batch-size and --encode-batch-size",
    )
    sgs.add_argument(
        "--keep-graphs",
        type=lambda v: int(v) if v.isdigit() else v,
        default=0,
        help="keep phase-1 graphs of sampled snippets: 0, a snippet count, 'all' or e.g. 1GB",
    )
    sgs.add_argument(
        "--reuse-frozen-prefix",
        type=_prefix_budget,
        default=DEFAULT_PREFIX_BUDGET,
        help="keep the output of the encoder's frozen stages for the sampled snippets, so "
        "phase 3 re-runs only the stages that train: a size (default 256MB), a snippet count, "
        "'all', or 'off'",
    )
    sgs.add_argument(
        "--decode-cache-mb",
        type=float,
        default=256.0,
        help="decode a video once per batch when its snippets fit in this many MB (0: off)",
    )
    sgs.add_argument(
        "--pixels",
        choices=("auto", "float32", "uint8"),
        default="auto",
        help="what the data path hands the encoder: uint8 frames (4x fewer bytes to copy, "
        "normalised on the device by the encoder) or normalised float32; auto: uint8 on CUDA",
    )
    sgs.add_argument(
        "--decode-workers",
        type=int,
        default=0,
        help="DataLoader worker processes that decode each training video once, in uint8, "
        "within --decode-cache-mb (0: decode lazily in the main process)",
    )
    sgs.add_argument(
        "--max-bad-videos",
        type=float,
        default=0.1,
        help="stop when more videos than this fail to decode (a fraction < 1 of the videos, "
        "or a count)",
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
    sgs.add_argument(
        "--amp",
        choices=("none", "bf16", "fp16"),
        default="none",
        help="mixed precision of training: autocast in bf16, or in fp16 with a GradScaler "
        "(evaluation runs in fp32)",
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
        help="default 2e-4 for the from-scratch small3d and ViTs, --detector-lr / 100 for a "
        "pretrained small3d (10x the paper's ratio, measured in docs/results.md), "
        f"{VIT_PRETRAINED_LR:g} for a ViT from --weights/--pretrained PATH (AdaTAD's fullft), "
        f"{VIT_AUTO_LR:g} for one from --pretrained auto, 1e-6 for tsm/r2plus1d",
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
        "from-scratch small3d and ViTs, else 0)",
    )
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument(
        "--threads",
        default="auto",
        help="torch intra-op threads; auto: the cores left after the decode thread (at least "
        "1), or $OMP_NUM_THREADS when set: more threads than free cores stall on a busy machine",
    )
    train.add_argument(
        "--sync-timing",
        action="store_true",
        help="synchronise a CUDA device at each phase boundary so that the phase split is the "
        "device's time (costs host syncs; for benchmarks)",
    )
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
    if args.checkpoint_blocks and args.encoder not in VIT_ENCODERS:
        p.error(
            f"--checkpoint-blocks checkpoints the blocks of a ViT; --encoder {args.encoder} has "
            f"none: pass one of {list(VIT_ENCODERS)} or drop the option"
        )
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
    if args.memory_budget is not None:
        check_memory_budget(p, args)
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) >= 1):
        p.error(f"--threads must be 'auto' or a number >= 1; got {args.threads!r}")
    if args.decode_workers < 0:
        p.error(f"--decode-workers must be >= 0 (0: decode in the main process); got "
                f"{args.decode_workers}")  # fmt: skip
    bad = args.max_bad_videos
    if not (math.isfinite(bad) and bad >= 0 and (bad < 1 or bad == int(bad))):
        p.error(f"--max-bad-videos must be a fraction in [0, 1) or a whole count; got {bad}")
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


def check_memory_budget(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--memory-budget``: a size (``2GB``, ``512MiB``, bytes), for SGS training an encoder."""
    try:
        budget = parse_bytes(args.memory_budget)
    except ValueError as err:
        p.error(f"--memory-budget: {err}")
    if budget <= 0:
        p.error(f"--memory-budget must be more than 0 bytes; got {args.memory_budget!r}")
    if args.naive or args.features is not None:
        p.error("--memory-budget sizes SGS's micro-batches; --naive holds every snippet "
                "in one graph and --features trains no encoder: drop one of them")  # fmt: skip


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
    return recipe(args.encoder, snippet_length=args.snippet_length, size=args.size)


def pretrains(args: argparse.Namespace) -> bool:
    """Whether the run pretrains (or reuses) the encoder's clip classifier before training."""
    return args.pretrained == "auto" and args.weights_from_pretrained


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on other options, decided here and nowhere else.

    ``--snippet-length`` and ``--size`` follow the encoder (:data:`SNIPPET_DEFAULTS`).

    ``--pretrained auto`` (an encoder of ``PRETRAINABLE`` on the synthetic set, no
    ``--weights``) sets ``--weights`` to the cached clip-classifier checkpoint,
    ``--pretrained PATH`` to ``PATH``; on other data, and for the larger ViTs, ``auto`` leaves
    the encoder as it is (the clip set is the synthetic set's pretraining).

    A from-scratch ``small3d`` (no ``--weights``) trains every stage at a high rate after a
    one-epoch hold; a pretrained encoder keeps its first stages frozen (the paper fixes two of
    TSM's four; one of small3d's three) and fine-tunes without a hold: TSM and R(2+1)D at the
    paper's 1e-6, a pretrained small3d at a hundredth of the detector's rate. The paper's ratio
    is a thousandth (1e-6 / 1e-3, with about 20x our number of steps); at that ratio every
    end-to-end setting of the pilot in docs/results.md scored below the frozen encoder, at a
    hundredth SGS γ = 0.3 scored above it on every seed.

    A ViT (VideoMAE) is fine-tuned whole (``--frozen-stages -1``), as AdaTAD's ``fullft``: at
    its backbone rate of 1e-5 from a given checkpoint, at 2e-4 without a hold from the weaker
    synthetic pretraining of ``--pretrained auto``, and like the from-scratch small3d otherwise.
    """
    length, size = SNIPPET_DEFAULTS.get(args.encoder, CNN_SNIPPET)
    if args.snippet_length is None:
        args.snippet_length = length
    if args.size is None:
        args.size = size
    args.weights_from_pretrained = False
    if args.weights is None and args.features is None:
        synthetic = args.annotations is None
        if args.pretrained == "auto" and args.encoder in PRETRAINABLE and synthetic:
            args.weights = default_checkpoint(pretrain_config(args))
            args.weights_from_pretrained = True
        elif args.pretrained not in ("auto", "none"):
            args.weights = Path(args.pretrained)
    vit = args.encoder in VIT_ENCODERS
    scratch = (args.encoder == "small3d" or vit) and args.weights is None
    if args.frozen_stages is None:
        if vit:
            args.frozen_stages = -1
        elif args.encoder == "small3d":
            args.frozen_stages = -1 if scratch else 1
        else:
            args.frozen_stages = 2
    if args.encoder_lr is None:
        if scratch:
            args.encoder_lr = 2e-4
        elif args.encoder == "small3d":
            args.encoder_lr = args.detector_lr / 100
        elif vit:
            args.encoder_lr = VIT_AUTO_LR if args.weights_from_pretrained else VIT_PRETRAINED_LR
        else:  # the paper's TSM rate
            args.encoder_lr = 1e-6
    if args.encoder_delay is None and args.schedule == "cosine":
        args.encoder_delay = 1.0 if scratch else 0.0
    return args


# The settings a resume must share with the run it continues (--resume-override accepts a change).
RESUME_SETTINGS = ("seed", "data_seed", "num_videos", "num_snippets", "snippet_length", "size",
                   "encoder", "weights", "epochs", "batch_size", "ratio", "micro_batch_size",
                   "snippet_sampler", "proposal_sampler", "aps_ratio", "naive", "encoder_lr",
                   "detector_lr", "schedule", "encoder_delay", "frozen_stages", "class_head",
                   "feature_norm", "annotations", "features", "data_root", "pretrained",
                   "val_fraction", "grad_scale", "layout", "window", "amp")  # fmt: skip


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k in RESUME_SETTINGS}  # fmt: skip
    if settings.get("layout") == "anet":
        # checkpoints written before --layout existed are all anet runs: without these keys
        # their settings still match, and they resume
        settings.pop("layout")
        settings.pop("window", None)
    if settings.get("amp") == "none":
        settings.pop("amp")  # as before --amp existed: fp32 checkpoints resume
    return settings


def fail(message: str) -> NoReturn:
    """A one-line error on stderr and exit code 2, as argparse does for bad options."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
