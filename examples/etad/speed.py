"""Measure the ETAD detector's training and inference speed on random features.

Run from ``examples/``::

    OMP_NUM_THREADS=1 python -m etad.speed --config small --threads 1

Prints the parameter count, training iterations per second (wall clock and process CPU time,
which is less disturbed by other processes on a shared machine) and inference time.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from .config import ETADConfig
from .model import ETAD


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("small", "paper"), default="small")
    parser.add_argument("--in-channels", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--aps-ratio", type=float, default=0.06)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = ETADConfig.small if args.config == "small" else ETADConfig.paper
    cfg = preset(in_channels=args.in_channels, aps_ratio=args.aps_ratio)
    model = ETAD(cfg)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(args.batch, cfg.in_channels, cfg.temporal_scale, generator=g)
    gts = [torch.sort(torch.rand(2, 2, generator=g), dim=1).values for _ in range(args.batch)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def step() -> float:
        out = model(feats, gts, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        return float(out["loss"].detach())

    for _ in range(2):  # warm-up
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        loss = step()
    wall = (time.perf_counter() - wall) / args.steps
    cpu = (time.process_time() - cpu) / args.steps
    t0, c0 = time.perf_counter(), time.process_time()
    preds = model.predict(feats)
    infer_wall, infer_cpu = time.perf_counter() - t0, time.process_time() - c0

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s)"
    )
    print(
        f"config {args.config}, in_channels {cfg.in_channels}, T {cfg.temporal_scale}, "
        f"batch {args.batch}, APS {cfg.aps_ratio:g} ({len(gts)} videos)"
    )
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    print(
        f"train: {1 / wall:.2f} it/s wall ({wall * 1e3:.0f} ms), "
        f"{1 / cpu:.2f} it/s of CPU time ({cpu * 1e3:.0f} ms); last loss {loss:.3f}"
    )
    print(
        f"predict, all {preds[0].segments.shape[0]} proposals x {args.batch} videos: "
        f"{infer_wall:.2f} s wall, {infer_cpu:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
