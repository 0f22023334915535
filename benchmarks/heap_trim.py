"""Resident memory over iterations with and without giving the CPU heap back between phases.

Runs a few SGS iterations of a real backbone (random init) in a fresh process per setting and
prints the growth of the peak RSS after each iteration, with ``release_cpu_memory`` on (the
default: :func:`sgs_tad.engine.heap.release_cpu_heap` after each phase and phase-3 micro-batch) and
off::

    python benchmarks/heap_trim.py                    # TSM-R50, N = 16, K = 4, γ = 0.3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from torch import nn


def run(cfg: dict) -> list[float]:
    from sgs_tad import SequentializedGradientSampler, freeze_norm_layers
    from sgs_tad.encoders import build_encoder

    torch.manual_seed(0)
    torch.set_num_threads(1)
    encoder = freeze_norm_layers(build_encoder(cfg["encoder"]))
    detector = nn.Conv1d(encoder.out_channels, 2, 3, padding=1)
    x = torch.randn(1, cfg["n"], 3, 8, cfg["size"], cfg["size"])
    sgs = SequentializedGradientSampler(encoder, micro_batch_size=cfg["k"], ratio=cfg["ratio"],
                                        release_cpu_memory=cfg["trim"])  # fmt: skip
    encoder(x[0, :1]).sum().backward()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks = []
    for _ in range(cfg["iterations"]):
        feats = sgs.encode(x)
        detector(feats.transpose(1, 2)).square().mean().backward()
        sgs.backward(x, feats)
        for p in [*encoder.parameters(), *detector.parameters()]:
            p.grad = None
        peaks.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    return peaks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="tsm_r50")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run(json.loads(args.one))))
        return
    for trim in (False, True):
        cfg = {**vars(args), "trim": trim}
        cfg.pop("one")
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        peaks = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"release_cpu_memory={trim}: peak RSS growth after each iteration "
              + " -> ".join(f"{v:.0f}" for v in peaks) + " MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
