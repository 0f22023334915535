"""The data path: videos per second at num_workers 0, 1, 2, and the share of a step waiting.

Two ways of loading the synthetic set (generated into a temporary folder, the main job's default
data: 48 videos, 48 px, 8-16 s at 16 fps; 32 snippets of 4 frames at 32 px), side by side in
one run, each at ``num_workers`` 0, 1 and 2:

* ``lazy``: today's default. DataLoader workers only build lazy sources; the snippets are
  decoded where they are asked for, in the main process, whatever ``num_workers`` is.
* ``workers``: ``ActivityNetDataset(decode_in_workers=True, dtype="uint8")``. Each worker
  decodes its videos once to ``uint8`` and hands them over in shared memory; the main process
  only indexes them and normalises (on the encoder's device, here the CPU).

Two measurements per setting, each over the second of two epochs (persistent workers, so worker
start-up is not counted):

* ``videos/s``: the data path alone, every snippet of every video fetched as the engine's
  phase 1 would (``get_snippets`` over all N), normalised to float32.
* ``wait %``: the same with a training step after each video (Small3DCNN forward and backward
  over its 32 snippets, one torch thread), the share of the step's wall time spent waiting for
  data (``next(loader)`` plus ``get_snippets``).

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


def epoch(loader: DataLoader, encoder: Small3DCNN, *, train: bool) -> tuple[float, float, int]:
    """``(seconds, seconds waiting for data, videos)`` of one pass over ``loader``."""
    wait = 0.0
    videos = 0
    start = time.perf_counter()
    it = iter(loader)
    while True:
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
    return time.perf_counter() - start, wait, videos


def measure(ann: Path, mode: str, workers: int, encoder: Small3DCNN) -> dict:
    ds = ActivityNetDataset(
        ann, synthetic_video_dir(ann), subset=None, training=True, **SNIPPETS, **MODES[mode][1]
    )
    loader = _loader(ds, workers)
    epoch(loader, encoder, train=False)  # warm-up: workers started, files in the page cache
    seconds, _, videos = epoch(loader, encoder, train=False)
    step_s, wait_s, _ = epoch(loader, encoder, train=True)
    return {
        "mode": mode,
        "num_workers": workers,
        "videos": videos,
        "videos_per_s": videos / seconds,
        "train_epoch_s": step_s,
        "wait_share": wait_s / step_s,
    }


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
        "| data path | num_workers | videos/s | vs its 0 workers | vs default, 0 workers "
        "| step waiting for data |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r["videos_per_s"]
        lines.append(
            f"| {MODES[r['mode']][0]} | {r['num_workers']} | {v:.1f} | "
            f"{v / base[r['mode']]:.2f}× | {v / default:.2f}× | {100 * r['wait_share']:.0f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--write-docs", action="store_true", help=f"update {DOC.relative_to(ROOT)}")
    args = p.parse_args()
    torch.set_num_threads(1)
    env = environment()
    torch.manual_seed(0)
    encoder = Small3DCNN().train()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ann = generate_synthetic_dataset(tmp, num_videos=args.videos)
        for mode in MODES:
            for workers in args.workers:
                rows.append(measure(ann, mode, workers, encoder))
                r = rows[-1]
                print(f"{mode:8s} workers={workers}: {r['videos_per_s']:.1f} videos/s, "
                      f"waiting {100 * r['wait_share']:.0f} % of a step", flush=True)  # fmt: skip
    env["load_average_after"] = list(os.getloadavg())
    text = table(rows)
    print(text)
    OUT.write_text(json.dumps({"environment": env, "snippets": SNIPPETS, "rows": rows}, indent=2))
    if args.write_docs:
        doc = DOC.read_text()
        block = (
            f"{BEGIN}\n## The data path: decoding in DataLoader workers\n\n"
            f"`python benchmarks/data_path.py` ({args.videos} synthetic videos, "
            f"{SNIPPETS['num_snippets']} snippets of {SNIPPETS['snippet_length']} frames at "
            f"{SNIPPETS['size']} px, batch 1, second epoch of two; training step: Small3DCNN "
            "forward and backward over the video's snippets, one torch thread).\n\n"
            f"{text}\n\nMachine: {env['platform']}, {env['cpus']} CPUs, Python {env['python']}, "
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
