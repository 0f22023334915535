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
A run stopped by SIGTERM or Ctrl-C saves a checkpoint, writes no ``model.pt``, marks
``metrics.json`` ``"interrupted": true`` and exits with 128 + the signal number (143 for
SIGTERM). One run at a time may use an ``--output-dir`` (a lock file while it runs), and
``--data-root`` without ``--annotations`` must be the synthetic set's own folder.

This file is the run (:func:`train`) and the subcommand dispatch (:func:`main`); the parts are in
``examples/etad/``: ``options.py`` (the command line), ``data.py``, ``training.py`` (models,
engine, schedule), ``evaluation.py`` and ``prediction.py`` (the ``evaluate`` and ``predict``
subcommands).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from etad.data import collate, dataset_options, prepare_data, windowed
from etad.evaluation import evaluate, evaluation_summary, print_evaluation
from etad.options import check_device, fail, parse_args, run_settings
from etad.plots import plot_predictions
from etad.prediction import evaluate_command, predict
from etad.training import (
    EpochSetter,
    build_models,
    detector_step,
    encoder_memory,
    make_engine,
    make_scheduler,
    memory_line,
    setup_distributed,
)
from sgs_tad import SGSTrainer
from sgs_tad.data import ActivityNetDataset
from sgs_tad.data.failures import TooManyBadVideosError
from sgs_tad.engine.sources import NonFiniteSnippetsError
from sgs_tad.training.callbacks import GradientStats
from sgs_tad.training.distributed import barrier
from sgs_tad.training.metrics import PeakMemory
from sgs_tad.training.optimization import adamw
from sgs_tad.training.outputs import (
    DiskFullError,
    OutputLock,
    OutputLockedError,
    atomic_torch_save,
    atomic_write_json,
)
from sgs_tad.training.threads import set_threads

log = logging.getLogger("etad_anet")


#: Exit status of a run stopped by a signal other than SIGTERM/SIGINT (those give 128 + the
#: signal number, 143 and 130, as a shell reports them).
EXIT_STOPPED = 3


def train(args: argparse.Namespace) -> dict[str, Any]:
    check_device(args.device)
    set_threads(decode_threads=1, requested=None if args.threads == "auto" else int(args.threads))
    rank, world = setup_distributed(args.device, args.ddp_timeout)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")  # fmt: skip
    # One run per --output-dir (rank 0 writes there): a second one would interleave
    # metrics.jsonl and replace the first one's checkpoints and model.pt.
    lock = OutputLock(args.output_dir, what="--output-dir") if rank == 0 else None
    try:
        if lock is not None:
            lock.acquire()
    except OutputLockedError as err:
        fail(str(err))
    try:
        return run_training(args, rank, world)
    finally:
        if lock is not None:
            lock.release()


def run_training(args: argparse.Namespace, rank: int, world: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ann, root, mode = prepare_data(args, rank)
    # Seeded after the data and the pretrained encoder are ready: pretraining in this process
    # (a cold data/pretrain cache) draws from the global generator, and the models built next
    # would then start from other weights than in a run that loads the cached encoder.
    torch.manual_seed(args.seed)
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
    if len(train_set) == 0:
        fail(f"{ann} has no videos in the training subset; give some videos "
             '"subset": "training" in the annotations, or check the annotation file')  # fmt: skip
    # thumos: every item is a window of a video (those with an action, for training)
    train_items = windowed(args, train_set, training=True)
    if len(train_items) == 0:
        fail(f"no --window {args.window} window of the {len(train_set)} training videos holds "
             "an action; lower --window or check the annotations")  # fmt: skip
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
        amp=args.amp,
        sync_timing=args.sync_timing,
        seed=args.seed,
        settings=run_settings(args),
        checkpoint_dir=checkpoints,
        log_dir=out,
        tensorboard=True,
        progress=not args.no_progress,
        log_every=1,
        callbacks=[EpochSetter(train_items), grad_stats],
    )
    # The memory win in one line, before training: the encoder's saved activations under SGS
    # (K snippets at a time; K from the probe with --memory-budget) against naive's whole batch.
    batch = [train_items[i].source for i in range(min(args.batch_size, len(train_items)))]
    try:
        memory = encoder_memory(trainer.engine, batch, micro_batch_size=args.micro_batch_size,
                                ratio=args.ratio)  # fmt: skip
    except ValueError as err:  # a --memory-budget that cannot hold one snippet
        fail(str(err))
    if memory is not None and rank == 0:
        print(memory_line(memory), flush=True)
    t_train, cpu_train = time.perf_counter(), time.process_time()
    try:
        fit = trainer.fit(train_items, epochs=args.epochs, batch_size=args.batch_size,
                          collate_fn=collate, resume=args.resume, num_workers=args.decode_workers,
                          resume_override=args.resume_override)  # fmt: skip
    except ValueError as err:
        if "other settings" in str(err):  # a resume that would silently change the run
            fail(str(err))
        raise
    except TooManyBadVideosError as err:  # data that broke or vanished: name it in one line
        fail(f"{err} The last checkpoint is in {checkpoints}; fix the files and --resume.")
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
    if fit["stopped"]:  # preempted: the checkpoint is the result, not a finished model
        stopped(args, fit, rank, world, checkpoints)
    summary: dict[str, Any] = {}
    peaks = trainer.timer.memory.as_mb()
    if rank == 0:
        try:
            ev = evaluate(args, encoder, detector, val_set, ann, list(train_set.classes))
        except FloatingPointError as err:  # a model that diverged: say it in one line
            fail(f"evaluation stopped: {err} {fit['skipped_steps']} of {fit['step']} training "
                 "steps were skipped (non-finite); lower the learning rates.")  # fmt: skip
        # Each final file is written atomically: a full disk or a kill leaves the old one.
        atomic_write_json(out / "predictions.json", ev["predictions"], indent=None)
        atomic_torch_save(
            {"encoder": encoder.state_dict(), "detector": detector.state_dict(),
             "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "classes": list(train_set.classes), "in_channels": in_channels},
            out / "model.pt",
        )  # fmt: skip
        summary = {
            **evaluation_summary(ev),
            # the run's peak: allocated and reserved on CUDA, RSS on the CPU (never reset)
            "peak_memory": peaks,
            "peak_memory_mb": peaks.get("allocated_mb", peaks.get("rss_mb", 0.0)),
            "train_time_s": train_time,
            "train_cpu_time_s": train_cpu_time,
            "total_time_s": time.perf_counter() - t0,
            "steps": fit["step"],
            "skipped_steps": fit["skipped_steps"],
            "bad_videos": fit["bad_videos"],
            "phases": fit["phases"],
            "grad_stats": grad_stats.summary(),
            "encoder_memory": memory,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "world_size": world,
        }
        atomic_write_json(out / "metrics.json", summary)
        try:
            plot_predictions(val_set, ev["predictions"], out / "predictions.png", num_videos=4)
        except ImportError as err:
            log.warning("no plot: %s (pip install 'sgs_tad[plot]')", err)
        print_evaluation(summary)
        memory = ", ".join(f"{PeakMemory.label(k)} {v:.0f}" for k, v in peaks.items())
        print(
            f"{memory} ({args.device}), training "
            f"{train_time:.0f} s, total {summary['total_time_s']:.0f} s; outputs in {out}"
        )
    return summary


def stopped(args: argparse.Namespace, fit: dict[str, Any], rank: int, world: int,
            checkpoints: Path) -> NoReturn:  # fmt: skip
    """End a run stopped before its last epoch (SIGTERM, Ctrl-C) as what it is.

    No evaluation and no ``model.pt`` (that name is a finished model's); ``metrics.json`` says
    ``"interrupted": true`` and where the checkpoint is, stderr says how to continue, and the
    exit status is 128 + the signal number (143 for SIGTERM), so a scheduler sees a failure.
    """
    signame = fit.get("stop_signal")
    code = 128 + int(getattr(signal, signame)) if signame else EXIT_STOPPED
    if rank == 0:
        atomic_write_json(args.output_dir / "metrics.json", {
            "interrupted": True, "stop_signal": signame, "steps": fit["step"],
            "epochs_done": fit["epoch"], "epochs": args.epochs, "checkpoint_dir": str(checkpoints),
            "skipped_steps": fit["skipped_steps"], "bad_videos": fit["bad_videos"],
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "world_size": world,
        })  # fmt: skip
        print(f"{Path(sys.argv[0]).name}: training was interrupted ({signame or 'stop request'})"
              f" at step {fit['step']}, epoch {fit['epoch']} of {args.epochs}; the checkpoint is"
              f" in {checkpoints} and no model.pt was written: rerun the same command with"
              " --resume to finish", file=sys.stderr)  # fmt: skip
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["predict"]:
            set_threads(decode_threads=1)
            predict(argv[1:])
        elif argv[:1] == ["evaluate"]:
            set_threads(decode_threads=1)
            evaluate_command(argv[1:])
        else:
            train(parse_args(argv))
    except NonFiniteSnippetsError as err:  # NaN/inf inputs: name the video, not the loss
        fail(str(err))
    except DiskFullError as err:  # one line that says what happened; no file was replaced
        print(f"{Path(sys.argv[0]).name}: error: {err.strerror}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
