"""Train ETAD end to end with SGS on ActivityNet-format data, evaluate it, and predict.

With no arguments it generates (or reuses) the embedded synthetic data set, trains the small
3D-CNN encoder and ETAD end to end with SGS (γ = 0.3, K = 4, APS 6 %), evaluates with the
ActivityNet protocol and writes everything into ``--output-dir``::

    python examples/etad_anet.py                            # train + evaluate
    python examples/etad_anet.py --ratio 1.0 --epochs 4      # other settings
    torchrun --nproc_per_node=2 examples/etad_anet.py        # DDP (gloo on CPU)
    python examples/etad_anet.py predict VIDEO.mp4 --model outputs/etad_anet/model.pt
    python examples/etad_anet.py evaluate --model outputs/etad_anet/model.pt --subset training

Outputs: ``predictions.json`` (ActivityNet results format), ``metrics.json``,
``predictions.png`` (detections against ground truth), ``metrics.jsonl`` and TensorBoard logs,
``checkpoints/`` (``--resume`` continues from the newest one) and ``model.pt`` for ``predict``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from etad import ETAD, ETADConfig
from etad.detections import to_detections
from etad.plots import plot_predictions
from sgs_tad import SequentializedGradientSampler, SGSTrainer
from sgs_tad.callbacks import Callback
from sgs_tad.data import ActivityNetDataset, generate_synthetic_dataset, synthetic_video_dir
from sgs_tad.data.snippets import MediaSnippetSource, draw_crop, snippet_frame_indices
from sgs_tad.data.video import probe_media
from sgs_tad.encoders import ENCODERS, build_encoder, freeze_encoder
from sgs_tad.evaluation import evaluate_detection, format_results
from sgs_tad.optimization import warmup_cosine_scheduler

log = logging.getLogger("etad_anet")


class FeatureStandardizer(nn.Module):
    """Standardise features ``[B, N, C]`` per channel with running statistics.

    Snippet features of a from-scratch encoder carry a large constant offset and small
    differences between videos; standardising makes those differences visible to the heads.
    Unlike BatchNorm it normalises with the running statistics in training too (updated
    without grad), so a batch of one video is normalised exactly as at inference.
    """

    def __init__(self, channels: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                flat = feats.detach().float().reshape(-1, feats.shape[-1])
                mean, var = flat.mean(0), flat.var(0, unbiased=False)
                m = torch.where(self.initialised, torch.tensor(self.momentum), torch.tensor(1.0))
                self.mean.lerp_(mean, m)
                self.var.lerp_(var, m)
                self.initialised.fill_(True)
        return (feats - self.mean) * torch.rsqrt(self.var + 1e-5)


FEATURE_NORMS = ("running", "layer")
CLASS_HEADS = ("snippet", "attention", "mean")


def snippet_class_targets(
    segments: torch.Tensor, labels: torch.Tensor, num_snippets: int, background: int
) -> torch.Tensor:
    """Class of every snippet: the label of the instance covering its centre, else background.

    ``segments`` are ``[G, 2]`` fractions of the video, ``labels`` ``[G]``; returns ``[N]``.
    """
    centres = (torch.arange(num_snippets, device=segments.device) + 0.5) / num_snippets
    inside = (centres[:, None] >= segments[None, :, 0]) & (centres[:, None] < segments[None, :, 1])
    targets = torch.full((num_snippets,), background, dtype=torch.long, device=segments.device)
    covered = inside.any(1)
    if covered.any():  # overlapping instances: the first in the annotation wins
        targets[covered] = labels.to(segments.device)[inside[covered].float().argmax(1)]
    return targets


class Detector(nn.Module):
    """ETAD plus a classifier whose video-level scores label the class-agnostic proposals.

    ActivityNet detectors take video-level class scores from a separate classifier and fuse
    the top-2 classes with each proposal (App. A.4); here a small head trains with the
    detector and plays that part. ``class_head``:

    * ``"snippet"`` (default): every snippet is classified (the action classes plus
      background) by a small temporal convolution, against the label of the instance that
      covers it; the video's scores are the foreground class probabilities summed over its
      snippets. Dense supervision: each snippet's feature gets its own class gradient.
    * ``"attention"`` / ``"mean"``: one label per video, from learned attention pooling (or the
      mean) of the features over time, concatenated with their max.
    """

    def __init__(
        self,
        config: ETADConfig,
        num_classes: int,
        feature_norm: str = "running",
        class_head: str = "snippet",
    ) -> None:
        super().__init__()
        if class_head not in CLASS_HEADS:
            raise ValueError(f"class_head must be one of {CLASS_HEADS}; got {class_head!r}.")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}; got {feature_norm!r}.")
        c = config.in_channels
        self.num_classes = num_classes
        self.class_head = class_head
        self.norm: nn.Module = (
            FeatureStandardizer(c) if feature_norm == "running" else nn.LayerNorm(c)
        )
        self.etad = ETAD(config)
        self.attention = nn.Linear(c, 1) if class_head == "attention" else None
        if class_head == "snippet":
            self.classifier: nn.Module = nn.Sequential(
                nn.Conv1d(c, 128, 3, padding=1), nn.ReLU(), nn.Conv1d(128, num_classes + 1, 1)
            )
        else:
            self.classifier = nn.Sequential(
                nn.Linear(2 * c, 128), nn.ReLU(), nn.Linear(128, num_classes)
            )

    def _video_logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.attention is None:
            pooled = feats.mean(1)
        else:  # attention pooling (multiple-instance learning): weigh the action's snippets
            pooled = (self.attention(feats).softmax(dim=1) * feats).sum(1)
        return self.classifier(torch.cat([pooled, feats.amax(1)], dim=-1))

    def class_loss(
        self, feats: torch.Tensor, segments: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> torch.Tensor:
        """Cross-entropy of the class head on normalised features ``[B, N, C]``.

        Every row counts: the main job resamples every video to the same ``N`` snippets, so
        there is no padding (with variable ``N``, mask the padded rows out of the loss).
        """
        if self.class_head != "snippet":
            video_labels = torch.stack([lab[0] for lab in labels]).to(feats.device)
            return nn.functional.cross_entropy(self._video_logits(feats), video_labels)
        n = feats.shape[1]
        targets = torch.stack(
            [
                snippet_class_targets(seg.to(feats.device), lab, n, self.num_classes)
                for seg, lab in zip(segments, labels)
            ]
        )
        logits = self.classifier(feats.transpose(1, 2))  # [B, K + 1, N]
        return nn.functional.cross_entropy(logits, targets)

    def class_probs(self, feats: torch.Tensor) -> torch.Tensor:
        """Video-level class scores ``[B, num_classes]``, summing to 1, of ``[B, N, C]``."""
        if self.class_head != "snippet":
            return self._video_logits(feats).softmax(-1)
        probs = self.classifier(feats.transpose(1, 2)).softmax(1)[:, : self.num_classes]
        scores = probs.sum(-1)
        return scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = p.add_argument_group("data")
    data.add_argument(
        "--data-root",
        type=Path,
        default=Path("data/synthetic"),
        help="videos (or features) folder; the synthetic set is written here",
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
    data.add_argument("--num-videos", type=int, default=96, help="synthetic set size")
    data.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of the synthetic set (--seed seeds the training only)",
    )
    data.add_argument("--num-snippets", type=int, default=32, help="T, snippets per video")
    data.add_argument("--snippet-length", type=int, default=4, help="L, frames per snippet")
    data.add_argument("--size", type=int, default=32, help="frame size after cropping")
    model = p.add_argument_group("model")
    model.add_argument("--encoder", default="small3d", choices=sorted(ENCODERS))
    model.add_argument("--weights", type=Path, default=None, help="local encoder checkpoint")
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
        help="encoder stages frozen (default: 2 for tsm/r2plus1d, -1 small3d)",
    )
    sgs = p.add_argument_group("SGS and APS")
    sgs.add_argument("--ratio", type=float, default=0.3, help="γ, snippet gradient ratio")
    sgs.add_argument("--micro-batch-size", type=int, default=4, help="K")
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
        help="default 2e-4 for the from-scratch small3d, 1e-6 for pretrained",
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
    train.add_argument("--output-dir", type=Path, default=Path("outputs/etad_anet"))
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.features is not None and args.annotations is None:
        p.error("--features needs --annotations (the annotation JSON of those videos)")
    if args.naive and args.features is not None:
        p.error("--naive trains the encoder; it makes no sense with --features")
    for flag in ("batch_size", "epochs", "num_videos", "micro_batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}")
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
    return args


# ----------------------------------------------------------------------------------- setup


def setup_distributed(device: str) -> tuple[int, int]:
    """Join the process group when started by torchrun; single-process runs need none."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


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
            generate_synthetic_dataset(
                args.data_root, num_videos=args.num_videos, seed=args.data_seed
            )
        if dist.is_initialized():
            dist.barrier()
    return data_paths(args)


def dataset_options(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    return dict(mode=mode, num_snippets=args.num_snippets, snippet_length=args.snippet_length,
                size=args.size, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip


def build_models(args: argparse.Namespace, in_channels: int | None, num_classes: int):
    if in_channels is not None:  # features mode: the "encoder" is the identity, frozen
        encoder: nn.Module = nn.Identity()
        channels = in_channels
    else:
        encoder = build_encoder(args.encoder, weights=args.weights)
        frozen = args.frozen_stages
        if frozen is None:
            frozen = -1 if args.encoder == "small3d" else 2
        if args.encoder != "small3d" or frozen >= 0:
            encoder = freeze_encoder(encoder, frozen_stages=frozen)
        channels = encoder.out_channels
    config = ETADConfig.small(
        in_channels=channels,
        temporal_scale=args.num_snippets,
        max_duration=args.num_snippets,
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

    def __init__(self, dataset: ActivityNetDataset) -> None:
        self.dataset = dataset

    def on_epoch_start(self, trainer: SGSTrainer, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def make_detector_step(detector: Detector, trainer_ref: list[SGSTrainer], seed: int):
    """The trainer's detector step: ETAD losses with APS plus the video classifier's loss."""

    def step(feats: torch.Tensor, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        # APS draws from a generator derived from (seed, step): reproducible, and a resumed
        # run draws exactly what the uninterrupted one would have.
        trainer = trainer_ref[0]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + trainer.step * 7919 + trainer.rank)
        gts = [s.to(feats.device) for s in batch["segments"]]
        feats = detector.norm(feats.float())
        losses = detector.etad(feats.transpose(1, 2), gts, generator=gen)
        cls = detector.class_loss(feats, gts, batch["labels"])
        return {**losses, "cls_loss": cls, "loss": losses["loss"] + cls}

    return step


def make_scheduler(args: argparse.Namespace, num_videos: int, world: int):
    """The ``--schedule cosine`` factory (``None``: the trainer's step decay)."""
    if args.schedule != "cosine":
        return None
    steps_per_epoch = math.ceil(num_videos / (args.batch_size * world))
    delay = args.encoder_delay
    if delay is None:
        delay = 1.0 if args.encoder == "small3d" and args.weights is None else 0.0

    def factory(optimizer: torch.optim.Optimizer) -> Any:
        # no encoder group when nothing in it trains (features mode, every stage frozen)
        names = {group.get("name") for group in optimizer.param_groups}
        delay_steps = {"encoder": round(delay * steps_per_epoch)} if "encoder" in names else {}
        return warmup_cosine_scheduler(
            optimizer,
            total_steps=max(1, args.epochs * steps_per_epoch),
            warmup_steps=steps_per_epoch,
            delay_steps=delay_steps,
        )

    return factory


class NaiveEndToEnd:
    """Stands in for the SGS engine in the trainer: every snippet of the batch in one graph.

    This is the plain end-to-end training that SGS replaces, kept for the memory and accuracy
    comparison (``--naive``). ``ratio = 0`` tells the trainer that no phase 3 follows: the
    encoder receives its gradient through the graph of ``encode``'s output.
    """

    ratio = 0.0

    def __init__(self, encoder: nn.Module, device: str) -> None:
        self.encoder, self.device = encoder, device

    def encode(self, sources: list[Any]) -> torch.Tensor:
        clips = [s.get_snippets(torch.arange(len(s))).to(self.device) for s in sources]
        return torch.stack([self.encoder(c) for c in clips])  # needs equal N: fixed T here

    def backward(self, sources: list[Any], feats: torch.Tensor) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# -------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def predict_videos(
    encoder: nn.Module, detector: Detector, sources: list[Any], k: int, device: str
) -> tuple[list[Any], torch.Tensor]:
    encoder.eval()
    detector.eval()
    feats = SequentializedGradientSampler(encoder, micro_batch_size=k, ratio=0.0, device=device)
    f = detector.norm(feats.encode(sources).detach().float())
    preds = detector.etad.predict(f.transpose(1, 2))
    probs = detector.class_probs(f)
    return preds, probs


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
    """
    results: dict[str, list[dict[str, Any]]] = {}
    agnostic: dict[str, list[dict[str, Any]]] = {}
    correct = labelled = 0
    for start in range(0, len(dataset), args.batch_size):
        samples = [dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))]
        preds, probs = predict_videos(
            encoder, detector, [s.source for s in samples], args.micro_batch_size, args.device
        )
        for s, pred, prob in zip(samples, preds, probs):
            results[s.video_id] = to_detections(
                pred, duration=s.duration, class_scores=prob.cpu(), class_names=classes
            )
            agnostic[s.video_id] = to_detections(pred, duration=s.duration)
            if len(s.labels) > 0:
                labelled += 1
                correct += int(int(prob.argmax()) == int(s.labels[0]))
    predictions = format_results(results)
    metrics = evaluate_detection(ann, predictions, subset=subset)
    localisation = evaluate_detection(
        ann, format_results(agnostic), subset=subset, class_agnostic=True
    )
    return {
        "predictions": predictions,
        "result": metrics,
        "class_agnostic_mAP": localisation.average_mAP,
        "video_accuracy": correct / max(1, labelled),
    }


def evaluation_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready numbers of :func:`evaluate`."""
    res = ev["result"]
    return {
        "mAP@0.5": res.mAP[0.5],
        "mAP@0.75": res.mAP[0.75],
        "mAP@0.95": res.mAP[0.95],
        "average_mAP": res.average_mAP,
        "mAP": {str(k): v for k, v in res.mAP.items()},
        "class_agnostic_mAP": ev["class_agnostic_mAP"],
        "video_accuracy": ev["video_accuracy"],
        "evaluation_version": EVALUATION_VERSION,
    }


def print_evaluation(summary: dict[str, Any]) -> None:
    print(
        f"mAP@0.5 {100 * summary['mAP@0.5']:.2f}  mAP@0.75 {100 * summary['mAP@0.75']:.2f}  "
        f"mAP@0.95 {100 * summary['mAP@0.95']:.2f}  average {100 * summary['average_mAP']:.2f}\n"
        f"class-agnostic average mAP {100 * summary['class_agnostic_mAP']:.2f}, video "
        f"classification accuracy {100 * summary['video_accuracy']:.1f} %"
    )


# ----------------------------------------------------------------------------------- train


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(args: argparse.Namespace) -> dict[str, Any]:
    rank, world = setup_distributed(args.device)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")  # fmt: skip
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ann, root, mode = prepare_data(args, rank)
    common = dataset_options(args, mode)
    train_set = ActivityNetDataset(ann, root, subset="training", training=True, seed=args.seed,
                                   **common)  # fmt: skip
    val_set = ActivityNetDataset(ann, root, subset="validation", classes=train_set.classes,
                                 **common)  # fmt: skip
    in_channels = None
    if mode == "features":
        in_channels = int(train_set[0].features.shape[1])
    encoder, detector = build_models(args, in_channels, len(train_set.classes))
    ratio = 0.0 if mode == "features" else args.ratio
    encoder_lr = args.encoder_lr
    if encoder_lr is None:
        encoder_lr = 2e-4 if args.encoder == "small3d" and args.weights is None else 1e-6
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    trainer_ref: list[SGSTrainer] = []
    trainer = SGSTrainer(
        encoder,
        detector,
        detector_step=make_detector_step(detector, trainer_ref, args.seed),
        loss_key="loss",
        micro_batch_size=args.micro_batch_size,
        ratio=ratio,
        sampler=args.snippet_sampler,
        sgs_options={"device": args.device},
        encoder_lr=encoder_lr,
        detector_lr=args.detector_lr,
        lr_milestones=(max(1, round(args.epochs * 5 / 6)),),
        scheduler=make_scheduler(args, len(train_set), world),
        scheduler_interval="step" if args.schedule == "cosine" else "epoch",
        max_grad_norm=5.0,
        seed=args.seed,
        device=args.device,
        checkpoint_dir=out / "checkpoints",
        log_dir=out,
        tensorboard=True,
        progress=not args.no_progress,
        log_every=1,
        callbacks=[EpochSetter(train_set)],
    )
    trainer_ref.append(trainer)
    if args.naive:
        trainer.sgs = NaiveEndToEnd(encoder, args.device)  # type: ignore[assignment]
    t_train = time.perf_counter()
    trainer.fit(train_set, epochs=args.epochs, batch_size=args.batch_size, collate_fn=collate,
                resume=args.resume)  # fmt: skip
    train_time = time.perf_counter() - t_train
    summary: dict[str, Any] = {}
    if rank == 0:
        ev = evaluate(args, encoder, detector, val_set, ann, list(train_set.classes))
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
            "total_time_s": time.perf_counter() - t0,
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
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return summary


# --------------------------------------------------------------------------------- predict


def load_model(path: Path, device: str) -> tuple[argparse.Namespace, nn.Module, Detector, list]:
    """The run's arguments, encoder, detector and class names from a ``model.pt``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    args = argparse.Namespace(**state["args"])
    args.weights, args.device = None, device
    # model.pt files written before these options existed used the older defaults
    args.class_head = getattr(args, "class_head", "mean")
    args.feature_norm = getattr(args, "feature_norm", "running")
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
    source = MediaSnippetSource(
        a.video,
        snippet_frame_indices(info.num_frames, args.num_snippets, args.snippet_length),
        kind="video",
        crop=draw_crop((info.height, info.width), size, mode="center"),
        size=size,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    duration = info.num_frames / info.fps
    preds, probs = predict_videos(encoder, detector, [source], args.micro_batch_size, a.device)
    dets = to_detections(preds[0], duration=duration, class_scores=probs[0],
                         class_names=classes)  # fmt: skip
    for d in dets[: a.top]:
        print(f"{d['segment'][0]:7.2f} s - {d['segment'][1]:7.2f} s  {d['label']:<12s} "
              f"score {d['score']:.3f}")  # fmt: skip
    return dets


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        predict(argv[1:])
    elif argv[:1] == ["evaluate"]:
        evaluate_command(argv[1:])
    else:
        train(parse_args(argv))


if __name__ == "__main__":
    main()
