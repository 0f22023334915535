"""``python -m sgs_tad.extract``: the command line of feature extraction."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from sgs_tad.data.video import VIDEO_EXTENSIONS
from sgs_tad.encoders import ENCODERS, build_encoder
from sgs_tad.extract.features import (
    MAIN_JOB_MEAN,
    MAIN_JOB_STD,
    SnippetOptions,
    extract_features,
    load_checkpoint_encoder,
    logger,
    videos_from_annotations,
    videos_in_folder,
)
from sgs_tad.training.outputs import DiskFullError, OutputLockedError, temporary_file

__all__ = ["main"]


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2, as argparse does for bad options."""
    print(f"python -m sgs_tad.extract: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sgs_tad.extract",
        description="Extract one .npy [T, C] feature file per video with a video encoder.",
    )
    model = p.add_argument_group("encoder (one of --encoder or --checkpoint)")
    model.add_argument("--encoder", choices=sorted(ENCODERS), help="registry name")
    model.add_argument("--weights", type=Path, help="encoder checkpoint file for --encoder")
    model.add_argument("--checkpoint", type=Path, help="model.pt written by examples/etad_anet.py")
    data = p.add_argument_group("videos (--annotations with --data-root, or --videos)")
    data.add_argument("--annotations", type=Path, help="ActivityNet-format annotation JSON")
    data.add_argument("--data-root", type=Path, help="folder of the annotated videos")
    data.add_argument("--subset", default=None, help="only this subset of --annotations")
    data.add_argument("--videos", type=Path, help="a folder of video files (id = file stem)")
    snip = p.add_argument_group("snippets (default: the main job's, or the checkpoint's)")
    snip.add_argument("--num-snippets", type=int, help="T, snippets per video (default 32)")
    snip.add_argument("--snippet-length", type=int, help="L, frames per snippet (default 4)")
    snip.add_argument("--size", type=int, help="frame size after the centre crop (default 32)")
    snip.add_argument("--frame-stride", type=int, default=1, help="frames apart within a snippet")
    snip.add_argument(
        "--snippet-stride",
        type=int,
        help="a snippet every this many frames instead of --num-snippets (THUMOS style)",
    )
    snip.add_argument("--mean", type=float, nargs=3, default=list(MAIN_JOB_MEAN))
    snip.add_argument("--std", type=float, nargs=3, default=list(MAIN_JOB_STD))
    run = p.add_argument_group("output and run")
    run.add_argument("--output", type=Path, required=True, help="folder of the .npy files")
    run.add_argument("--prefix", default="", help="file name prefix, e.g. v_ (ActionFormer)")
    run.add_argument("--overwrite", action="store_true", help="recompute existing files")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--micro-batch-size", type=int, default=8, help="snippets per encoder call")
    run.add_argument("--no-progress", action="store_true")
    return p


def _check_args(a: argparse.Namespace) -> None:
    """Refuse inconsistent options with one line naming the value and the fix (exit 2)."""
    if a.weights is not None and a.encoder is None:
        _fail("--weights needs --encoder NAME (a model.pt from the main job goes to --checkpoint)")
    if (a.encoder is None) == (a.checkpoint is None):
        _fail(
            "give exactly one of --encoder NAME (with --weights FILE) or --checkpoint model.pt; "
            f"got --encoder {a.encoder} and --checkpoint {a.checkpoint}"
        )
    for flag in ("weights", "checkpoint"):
        value = getattr(a, flag)
        if value is not None and not value.is_file():
            _fail(f"--{flag} {value}: no such file")
    if (a.annotations is None) == (a.videos is None):
        _fail(
            "give exactly one input: --annotations FILE.json with --data-root DIR, or --videos "
            f"DIR; got --annotations {a.annotations} and --videos {a.videos}"
        )
    if a.annotations is not None:
        if not a.annotations.is_file():
            _fail(f"--annotations {a.annotations}: no such file")
        if a.data_root is None or not a.data_root.is_dir():
            _fail(
                f"--annotations needs --data-root DIR, the folder of its videos; got "
                f"--data-root {a.data_root}"
            )
    elif not a.videos.is_dir():
        _fail(f"--videos {a.videos}: not a folder; pass the folder holding the video files")
    elif a.data_root is not None or a.subset is not None:
        _fail("--data-root and --subset go with --annotations; with --videos drop them")
    for flag in ("num_snippets", "snippet_length", "size", "frame_stride", "micro_batch_size"):
        value = getattr(a, flag)
        if value is not None and value < 1:
            _fail(f"--{flag.replace('_', '-')} must be >= 1; got {value}")
    if a.snippet_stride is not None:
        if a.snippet_stride < 1:
            _fail(f"--snippet-stride must be >= 1; got {a.snippet_stride}")
        if a.num_snippets is not None:
            _fail(
                f"--snippet-stride {a.snippet_stride} and --num-snippets {a.num_snippets} "
                "exclude each other: a fixed snippet count, or a snippet every N frames"
            )
    if min(a.std) <= 0:
        _fail(f"--std must be three values > 0; got {a.std}")
    if a.output.exists() and not a.output.is_dir():
        _fail(f"--output {a.output} is a file; pass a folder (created if needed)")
    if "/" in a.prefix or os.sep in a.prefix or a.prefix in (".", ".."):
        _fail(f"--prefix {a.prefix!r} cannot start a file name (it holds a path separator); "
              "pass a plain prefix such as v_")  # fmt: skip
    _check_writable(a.output)
    try:
        device = torch.device(a.device)
    except RuntimeError:
        _fail(f"--device {a.device!r} is not a device; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {a.device} but CUDA is not available here; use --device cpu")


def _check_writable(output: Path) -> None:
    """Refuse an ``--output`` that cannot be written now, before the encoder is loaded (and
    without creating it: a run refused for another reason leaves nothing behind)."""
    folder = output
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        _fail(f"--output {output}: {folder} is a file, so the folder cannot be created; pass "
              "another folder")  # fmt: skip
    if folder == output:
        try:  # the folder exists: try what the run will do
            fd, probe = temporary_file(output / "probe")
            os.close(fd)
            probe.unlink()
        except OSError as err:
            _fail(f"--output {output} cannot be written ({err.strerror or err}); pass a "
                  "folder you can write to")  # fmt: skip
    elif not os.access(folder, os.W_OK | os.X_OK):
        _fail(f"--output {output} cannot be created: {folder} is not writable; pass a folder "
              "you can write to")  # fmt: skip


def _build(a: argparse.Namespace) -> tuple[nn.Module, SnippetOptions]:
    """The encoder and the snippet options of the command line (exit 2 on a bad file)."""
    defaults: dict[str, Any] = {"num_snippets": 32, "snippet_length": 4, "size": 32}
    try:
        if a.checkpoint is not None:
            encoder, run_args = load_checkpoint_encoder(a.checkpoint)
            defaults.update({k: run_args[k] for k in defaults if run_args.get(k) is not None})
        else:
            encoder = build_encoder(a.encoder, weights=a.weights)
    except (ValueError, TypeError, KeyError, RuntimeError, OSError, EOFError,
            pickle.UnpicklingError) as err:  # fmt: skip
        source = a.checkpoint if a.checkpoint is not None else a.weights
        detail = " ".join(str(err).split())[:400] or "the file is empty or truncated"
        _fail(f"cannot load the encoder from {source}: {type(err).__name__}: {detail}")
    stride_mode = a.snippet_stride is not None
    opts = SnippetOptions(
        num_snippets=None if stride_mode else (a.num_snippets or defaults["num_snippets"]),
        snippet_length=a.snippet_length or defaults["snippet_length"],
        size=a.size or defaults["size"],
        frame_stride=a.frame_stride,
        snippet_stride=a.snippet_stride,
        mean=tuple(a.mean),
        std=tuple(a.std),
    )
    return encoder, opts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 some videos failed).

    Bad arguments exit with status 2 and a one-line message (``SystemExit``).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
    """
    a = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _check_args(a)
    encoder, opts = _build(a)
    if a.annotations is not None:
        try:
            videos = videos_from_annotations(a.annotations, a.data_root, subset=a.subset)
        except (ValueError, OSError) as err:
            _fail(f"cannot read --annotations {a.annotations}: {' '.join(str(err).split())}")
    else:
        videos = videos_in_folder(a.videos)
    if not videos:
        where = (
            f"--videos {a.videos}" if a.videos is not None else f"--annotations {a.annotations}"
        )
        _fail(
            f"{where} holds no videos (extensions {', '.join(VIDEO_EXTENSIONS)}"
            f"{'' if a.subset is None else f', subset {a.subset!r}'})"
        )
    encoder.to(a.device)
    logger.info(
        "extracting %d videos with %s into %s (T=%s, L=%d, size=%s)",
        len(videos),
        type(encoder).__name__,
        a.output,
        opts.num_snippets if opts.num_snippets is not None else f"every {opts.snippet_stride}",
        opts.snippet_length,
        opts.frame_size,
    )
    try:
        summary = extract_features(
            encoder,
            videos,
            a.output,
            snippets=opts,
            micro_batch_size=a.micro_batch_size,
            device=a.device,
            prefix=a.prefix,
            overwrite=a.overwrite,
            progress=not a.no_progress,
        )
    except DiskFullError as err:
        print(f"python -m sgs_tad.extract: error: {err.strerror}", file=sys.stderr)
        return 1
    except (ValueError, OutputLockedError, OSError) as err:  # found before any decoding
        _fail(" ".join(str(err).split()))
    print(
        f"{summary['written']} written, {summary['skipped']} skipped (already there), "
        f"{summary['failed']} failed of {summary['total']} videos; features "
        f"[T, {summary['channels'] if summary['channels'] is not None else 'C'}] in "
        f"{summary['output_dir']} ({summary['seconds']:.1f} s)"
    )
    for video_id, error in summary["failures"].items():
        print(f"failed: {video_id}: {error}", file=sys.stderr)
    return 1 if summary["failed"] else 0
