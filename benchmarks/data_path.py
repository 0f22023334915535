"""The data path: videos per second at num_workers 0, 1, 2, and the share of a step waiting.

Two ways of loading the synthetic set (generated into a temporary folder, the main job's default
data: 48 videos, 48 px, 8-16 s at 16 fps; 32 snippets of 4 frames at 32 px), side by side in
one run, each at ``num_workers`` 0, 1 and 2:

* ``lazy``: today's default. DataLoader workers only build lazy sources; the snippets are
  decoded where they are asked for, in the main process, whatever ``num_workers`` is.
* ``workers``: ``ActivityNetDataset(decode_in_workers=True, dtype="uint8")``. Each worker
  decodes its videos once to ``uint8`` and hands them over in shared memory; the main process
  only indexes them and normalises (on the encoder's device, here the CPU).

Two measurements per setting (persistent workers; worker start-up is not counted):

* ``videos/s``: the data path alone, every snippet of every video fetched as the engine's
  phase 1 would (``get_snippets`` over all N), normalised to float32; the median of
  ``--repeats`` epochs, interleaved over the settings so that a busy spell of the machine
  hits them alike.
* ``wait %``: the same with a training step after each video (Small3DCNN forward and backward
  over its 32 snippets, one torch thread), the share of the steps' wall time spent waiting for
  data (``next(loader)`` plus ``get_snippets``), over ``--train-videos`` videos.

To reproduce::

    python benchmarks/data_path.py                 # prints the table, writes data_path.json
    python benchmarks/data_path.py --write-docs    # also updates docs/benchmarks.md

The machine is shared: its load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sgs_tad.data import ActivityNetDataset, collate_samples, generate_synthetic_dataset
from sgs_tad.data.synthetic import synthetic_video_dir
from sgs_tad.encoders import Small3DCNN

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
OUT = Path(__file__).with_suffix(".json")
BEGIN, END = "<!-- data-path:begin -->", "<!-- data-path:end -->"
MODES = {
    "lazy": ("lazy sources, decoded in the main process (default)", {}),
    "workers": ("decoded in workers, uint8", {"decode_in_workers": True, "dtype": "uint8"}),
}
SNIPPETS = dict(num_snippets=32, snippet_length=4, size=32)


def _loader(ds: ActivityNetDataset, workers: int) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_samples,
        persistent_workers=workers > 0,
    )


def epoch(
    loader: DataLoader, encoder: Small3DCNN, *, train: bool, limit: int | None = None
) -> tuple[float, float, float, int]:
    """``(seconds, seconds waiting for data, main-process CPU seconds, videos)`` of one pass
    over ``loader`` (the first ``limit`` videos)."""
    wait = 0.0
    videos = 0
    cpu = time.process_time()
    start = time.perf_counter()
    it = iter(loader)
    while limit is None or videos < limit:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            wait += time.perf_counter() - t0
            break
        xs = [encoder.normalise_input(s.get_snippets(torch.arange(len(s)))) for s in batch.sources]
        wait += time.perf_counter() - t0
        videos += len(xs)
        if train:
            for x in xs:
                encoder(x).square().mean().backward()
    return time.perf_counter() - start, wait, time.process_time() - cpu, videos


def _dataset(ann: Path, mode: str) -> ActivityNetDataset:
    return ActivityNetDataset(
        ann, synthetic_video_dir(ann), subset=None, training=True, **SNIPPETS, **MODES[mode][1]
    )


def throughput(ann: Path, mode: str, workers: int, encoder: Small3DCNN) -> dict:
    """Videos per second over the second of two epochs (the first starts the workers)."""
    loader = _loader(_dataset(ann, mode), workers)
    epoch(loader, encoder, train=False)
    seconds, _, cpu, videos = epoch(loader, encoder, train=False)
    return {"videos_per_s": videos / seconds, "main_cpu_s": cpu, "load": os.getloadavg()[0]}


def wait_share(ann: Path, mode: str, workers: int, encoder: Small3DCNN, videos: int) -> float:
    """Share of the training steps' wall time spent waiting for data (first ``videos``)."""
    loader = _loader(_dataset(ann, mode), workers)
    epoch(loader, encoder, train=False, limit=2 * max(1, workers))  # workers started
    step_s, wait_s, _, _ = epoch(loader, encoder, train=True, limit=videos)
    return wait_s / step_s


def environment() -> dict:
    import av
    import numpy

    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "av": av.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(os.getloadavg()),
    }


def table(rows: list[dict]) -> str:
    base = {r["mode"]: r["videos_per_s"] for r in rows if r["num_workers"] == 0}
    default = base.get("lazy", float("nan"))
    lines = [
        "| data path | num_workers | videos/s (median) | runs | vs its 0 workers "
        "| vs default, 0 workers | main-process CPU s per epoch | step waiting for data |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r["videos_per_s"]
        lines.append(
            f"| {MODES[r['mode']][0]} | {r['num_workers']} | {v:.1f} | "
            f"{', '.join(f'{x:.0f}' for x in r['videos_per_s_runs'])} | "
            f"{v / base[r['mode']]:.2f}× | {v / default:.2f}× | "
            f"{statistics.median(r['main_cpu_s_per_epoch']):.2f} | {100 * r['wait_share']:.0f} % |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """The issue's target (>= 1.7x the videos/s at 2 workers than at 0), met or not."""
    speed = {(r["mode"], r["num_workers"]): r["videos_per_s"] for r in rows}
    if ("workers", 2) not in speed or ("lazy", 0) not in speed:
        return ""
    ratio = speed["workers", 2] / speed["lazy", 0]
    return (
        f"Target: at least 1.7× the videos per second with worker decoding at 2 workers than "
        f"the default at 0 workers: {'met' if ratio >= 1.7 else 'not met'} ({ratio:.2f}×). "
        "Lazy sources do not speed up with workers at all (they decode in the main process); "
        "with decode_in_workers the main process's CPU time per epoch drops to the indexing "
        "and the normalisation, and what a faster step needs is free cores for the workers."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=3, help="throughput epochs per setting")
    p.add_argument("--train-videos", type=int, default=16, help="videos of the wait-share run")
    p.add_argument("--write-docs", action="store_true", help=f"update {DOC.relative_to(ROOT)}")
    args = p.parse_args()
    torch.set_num_threads(1)
    env = environment()
    torch.manual_seed(0)
    encoder = Small3DCNN().train()
    settings = [(mode, w) for mode in MODES for w in args.workers]
    runs: dict[tuple[str, int], list[dict]] = {k: [] for k in settings}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ann = generate_synthetic_dataset(tmp, num_videos=args.videos)
        # Interleaved repeats: a busy spell of the shared machine hits every setting alike.
        for repeat in range(args.repeats):
            for mode, workers in settings:
                r = throughput(ann, mode, workers, encoder)
                runs[mode, workers].append(r)
                speed, load = r["videos_per_s"], r["load"]
                print(f"repeat {repeat}: {mode:8s} workers={workers}: {speed:.1f} videos/s "
                      f"(load {load:.1f})", flush=True)  # fmt: skip
        for mode, workers in settings:
            share = wait_share(ann, mode, workers, encoder, args.train_videos)
            print(
                f"{mode:8s} workers={workers}: waiting {100 * share:.0f} % of a step", flush=True
            )
            speeds = [r["videos_per_s"] for r in runs[mode, workers]]
            rows.append(
                {
                    "mode": mode,
                    "num_workers": workers,
                    "videos_per_s": statistics.median(speeds),
                    "videos_per_s_runs": speeds,
                    "main_cpu_s_per_epoch": [r["main_cpu_s"] for r in runs[mode, workers]],
                    "load_average": [r["load"] for r in runs[mode, workers]],
                    "wait_share": share,
                }
            )
    env["load_average_after"] = list(os.getloadavg())
    text = table(rows)
    print(text)
    print(verdict(rows))
    OUT.write_text(json.dumps({"environment": env, "snippets": SNIPPETS, "rows": rows}, indent=2))
    if args.write_docs:
        doc = DOC.read_text()
        block = (
            f"{BEGIN}\n## The data path: decoding in DataLoader workers\n\n"
            f"`python benchmarks/data_path.py` ({args.videos} synthetic videos, "
            f"{SNIPPETS['num_snippets']} snippets of {SNIPPETS['snippet_length']} frames at "
            f"{SNIPPETS['size']} px, batch 1; videos/s: the second epoch of two, median of "
            f"{args.repeats} interleaved repeats; waiting: {args.train_videos} training steps, "
            "each a Small3DCNN forward and backward over the video's snippets, one torch "
            "thread).\n\n"
            f"{text}\n\n{verdict(rows)}\n\n"
            f"Machine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}, "
            f"torch {env['torch']}, PyAV {env['av']}; load average before/after "
            f"{env['load_average_before'][0]:.1f}/{env['load_average_after'][0]:.1f} "
            "(a shared machine: other jobs ran beside this one).\n{END}"
        ).replace("{END}", END)
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip("\n") + "\n\n" + block + "\n"
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
