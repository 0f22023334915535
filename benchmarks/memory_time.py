"""Peak memory and time of SGS against naive end to end and temporal checkpointing.

Each configuration runs in a fresh subprocess, so its peak RSS is its own. For every method it
reports, relative to naive end-to-end training at the same N:

- peak RSS growth of the process during training (CPU), or ``max_memory_allocated`` (CUDA);
- the peak of live bytes saved for backward, counted with ``saved_tensors_hooks``;
- wall time of one training iteration (min over the timed repeats).

Methods: ``naive`` (all N snippets in one graph), ``ckpt`` (``torch.utils.checkpoint`` over
micro-batches of K, non-reentrant, as OpenTAD does), ``sgs`` (this library) at γ ∈ {0.3, 1.0}.

To reproduce (about 10 minutes on 2 CPU cores)::

    python benchmarks/memory_time.py                 # full grid, writes docs/benchmarks.md
    python benchmarks/memory_time.py --quick         # N ∈ {64, 128}, K = 4
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- memory-time:begin -->", "<!-- memory-time:end -->"


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


class Encoder(nn.Module):
    """A ResNet-style 2D encoder applied per frame (TSN style): snippet [3, L, H, W] -> [C]."""

    def __init__(self, c: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(blocks)])
        self.head = nn.Linear(c, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, _, length, h, w = x.shape
        frames = x.transpose(1, 2).reshape(m * length, 3, h, w)
        y = self.blocks(torch.relu(self.stem(frames)))
        return self.head(y.mean((2, 3)).view(m, length, -1).mean(1))


class Detector(nn.Module):
    def __init__(self, c: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(c, 64, 3, padding=1), nn.ReLU(), nn.Conv1d(64, 2, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, 2, N]
        return self.net(feats.transpose(1, 2))


class SavedBytes:
    """Live and peak bytes saved for backward (each save counted, shared storage included)."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        counter = self

        class Holder:
            def __init__(self, t: torch.Tensor) -> None:
                self.t = t
                self.n = t.numel() * t.element_size()
                counter.live += self.n
                counter.peak = max(counter.peak, counter.live)

            def __del__(self) -> None:
                counter.live -= self.n

        return torch.autograd.graph.saved_tensors_hooks(Holder, lambda h: h.t)


def run_one(cfg: dict) -> dict:
    """Train one iteration per repeat with one method; runs inside the fresh subprocess."""
    from sgs_tad import SequentializedGradientSampler

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    encoder, detector = Encoder().to(device), Detector().to(device)
    n, k = cfg["n"], cfg["k"]
    snippets = torch.randn(1, n, 3, 4, 32, 32, device=device)
    target = torch.rand(1, 2, n, device=device)
    params = [*encoder.parameters(), *detector.parameters()]

    def criterion(feats: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(detector(feats), target)

    sgs = SequentializedGradientSampler(encoder, micro_batch_size=k, ratio=cfg["ratio"])

    def iteration() -> None:
        if cfg["method"] == "naive":
            feats = encoder(snippets.flatten(0, 1)).view(1, n, -1)
            criterion(feats).backward()
        elif cfg["method"] == "ckpt":
            flat = snippets.flatten(0, 1)
            parts = [
                checkpoint(encoder, flat[i : i + k], use_reentrant=False) for i in range(0, n, k)
            ]
            criterion(torch.cat(parts).view(1, n, -1)).backward()
        else:
            sgs.step(snippets, criterion)
        for p in params:
            p.grad = None

    # Pay one-off costs (kernel selection, thread pools, allocator arenas) before the baseline,
    # so the measured growth is the activations' and not the runtime's.
    encoder(snippets[0, :1]).sum().backward()
    for p in params:
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = SavedBytes()
    with saved.hooks():
        iteration()  # warm-up, also the memory measurement
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(cfg["repeats"]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        iteration()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {
        **cfg,
        "peak_rss_mb": (peak_rss - base_rss) / 1024,
        "saved_mb": saved.peak / 2**20,
        "time_s": min(times),
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def configs(ns: list[int], ks: list[int], ratios: list[float]) -> list[dict]:
    grid = []
    for n in ns:
        grid.append({"method": "naive", "n": n, "k": n, "ratio": 1.0})
        for k in ks:
            grid.append({"method": "ckpt", "n": n, "k": k, "ratio": 1.0})
            for r in ratios:
                grid.append({"method": "sgs", "n": n, "k": k, "ratio": r})
    return grid


def environment() -> str:
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{numpy.__version__}; {platform.system()} {platform.release()}; CPU: {cpu} "
        f"({torch.get_num_threads()} threads available); GPU: {gpu}"
    )


def table(rows: list[dict]) -> str:
    naive = {r["n"]: r for r in rows if r["method"] == "naive"}
    mem_key = "cuda_peak_mb" if "cuda_peak_mb" in rows[0] else "peak_rss_mb"
    lines = [
        "| N | method | K | γ | peak memory MB | ratio to naive | saved-for-backward MB "
        "| ratio | time s | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = naive[r["n"]]
        name = {"naive": "naive end to end", "ckpt": "checkpoint", "sgs": "SGS"}[r["method"]]
        k = "-" if r["method"] == "naive" else r["k"]
        g = f"{r['ratio']:.1f}" if r["method"] == "sgs" else "-"
        lines.append(
            f"| {r['n']} | {name} | {k} | {g} | {r[mem_key]:.0f} | "
            f"{r[mem_key] / max(base[mem_key], 1e-9):.3f} | {r['saved_mb']:.1f} | "
            f"{r['saved_mb'] / max(base['saved_mb'], 1e-9):.3f} | {r['time_s']:.2f} | "
            f"{r['time_s'] / base['time_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N ∈ {64, 128}, K = 4 only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "memory_time.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    ns, ks = ([64, 128], [4]) if args.quick else ([64, 128, 256, 512], [1, 4, 8])
    rows = []
    for cfg in configs(ns, ks, [0.3, 1.0]):
        cfg.update(device=args.device, repeats=args.repeats, threads=args.threads)
        res = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"N={row['n']:4d} {row['method']:5s} K={row['k']:3d} γ={row['ratio']:.1f} "
            f"peak={row.get('cuda_peak_mb', row['peak_rss_mb']):8.1f} MB "
            f"saved={row['saved_mb']:8.1f} MB time={row['time_s']:.2f} s",
            flush=True,
        )
    args.json.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=1))
    section = (
        f"{BEGIN}\n## SGS against naive end to end and checkpointing\n\n"
        f"Measured by `python benchmarks/memory_time.py{' --quick' if args.quick else ''}` "
        f"on {args.device}, {args.threads} thread(s), one video per iteration, encoder: "
        "ResNet-style 2D CNN per frame (3 residual blocks, 32 channels, 4×32×32 frames per "
        "snippet), detector: 2-layer temporal conv. Memory on CPU is the growth of the peak "
        "RSS of a fresh process over its value before training; saved-for-backward is the peak "
        "of live tensors saved by autograd. Ratios are to naive at the same N.\n\n"
        f"Environment: {environment()}\n\n{table(rows)}\n{END}"
    )
    text = args.output.read_text() if args.output.exists() else "# Benchmarks\n"
    if BEGIN in text:
        text = text.split(BEGIN)[0] + section + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    args.output.write_text(text)
    print(table(rows))


if __name__ == "__main__":
    main()
