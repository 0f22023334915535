"""Time per call of every sampler and backend, side by side.

Sizes: N in {128, 1024, 8256} items (8,256 = the ActivityNet proposal map), k = 6 % and 30 %
of N, C = 256 feature channels (random Gaussian features). Prints a Markdown table with the
machine and versions and writes it to ``benchmarks/results/samplers.md``.

The dppy backend is O(N³) and needs the dense N×N kernel: it runs only for N <= --dppy-max-n
(default 1024); ``--dppy-full`` adds its N = 8,256, k = 6 % call (about six minutes on a
2-core CPU, and its samples are wrong at that size, see docs/samplers.md).

To reproduce::

    python benchmarks/samplers.py            # full table
    python benchmarks/samplers.py --quick    # N in {128, 1024}, one repeat
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from sgs_tad.samplers import make_sampler
from sgs_tad.samplers.fps import has_torch_cluster

SIZES = (128, 1024, 8256)
RATIOS = (0.06, 0.3)
CHANNELS = 256
RESULTS = Path(__file__).resolve().parent / "results" / "samplers.md"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        return importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _time_call(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds per call after one warm-up call; the warm-up alone when it is slow."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > 2.0:
        return first
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _configs(dppy_ok: bool) -> list[tuple[str, str, dict[str, str]]]:
    rows = [
        ("random", "-", {}),
        ("grid", "-", {}),
        ("block", "-", {}),
        ("fps", "torch", {"backend": "torch"}),
    ]
    if has_torch_cluster():
        rows.append(("fps", "torch_cluster", {"backend": "torch_cluster"}))
    rows.append(("kdpp", "native", {"backend": "native"}))
    if dppy_ok:
        rows.append(("kdpp", "dppy", {"backend": "dppy"}))
    return rows


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N in {128, 1024}, one repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
    parser.add_argument("--dppy-max-n", type=int, default=1024, help="largest N for dppy")
    parser.add_argument("--dppy-full", action="store_true", help="also time dppy at N=8256")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown output file")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice; use 1 on a shared, loaded box)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    sizes = SIZES[:2] if args.quick else SIZES
    repeats = 1 if args.quick else args.repeats
    dppy_ok = _version("dppy") != "not installed"
    configs = _configs(dppy_ok)
    cells = [(n, r, max(1, int(r * n))) for n in sizes for r in RATIOS]
    times: dict[tuple[str, str], dict[tuple[int, float], float | None]] = {}

    for name, backend, options in configs:
        sampler = make_sampler(name, **options)
        row: dict[tuple[int, float], float | None] = {}
        for n, r, k in cells:
            if backend == "dppy" and n > args.dppy_max_n:
                full = args.dppy_full and n == SIZES[-1] and r == RATIOS[0]
                if not full:
                    row[(n, r)] = None
                    continue
            feats = torch.randn(n, CHANNELS, generator=torch.Generator().manual_seed(n))
            gen = torch.Generator().manual_seed(0)

            def call(sampler=sampler, n=n, k=k, feats=feats, gen=gen) -> object:  # type: ignore[no-untyped-def]
                return sampler(n, k, features=feats, generator=gen)

            row[(n, r)] = _time_call(call, repeats)
            print(f"{name:>6} {backend:>13}  N={n:<5} k={k:<5} {_fmt(row[(n, r)])}", flush=True)
        times[(name, backend)] = row

    header = "| sampler | backend | " + " | ".join(f"N={n}, k={k}" for n, _, k in cells) + " |"
    lines = [
        "# Sampler speed",
        "",
        f"`python benchmarks/samplers.py{' --quick' if args.quick else ''}` on "
        f"{datetime.date.today().isoformat()}: time per call (median of {repeats} after a "
        f"warm-up call; the warm-up call alone where it takes over 2 s), random Gaussian "
        f"features, C = {CHANNELS}, k = floor(ratio·N) for ratio 6 % and 30 %.",
        "",
        f"- machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"torch threads {torch.get_num_threads()}, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {_version('numpy')}, dppy {_version('dppy')}, "
        f"torch-cluster {_version('torch_cluster')}",
        f"- dppy runs only for N <= {args.dppy_max_n}"
        + (" and at N = 8256, k = 6 %" if args.dppy_full else "")
        + " (dense N×N kernel, O(N³)); '–' = not run.",
        "",
        header,
        "|" + "---|" * (len(cells) + 2),
    ]
    for (name, backend), row in times.items():
        values = " | ".join(_fmt(row.get((n, r))) for n, r, _ in cells)
        lines.append(f"| {name} | {backend} | {values} |")

    def ratio_row(label: str, slow: tuple[str, str], fast: tuple[str, str]) -> None:
        if slow not in times or fast not in times:
            return
        values = []
        for n, r, _ in cells:
            a, b = times[slow].get((n, r)), times[fast].get((n, r))
            values.append("–" if a is None or b is None else f"{a / b:.1f}×")
        lines.append(f"| {label} | ratio | " + " | ".join(values) + " |")

    ratio_row("dppy / native k-DPP", ("kdpp", "dppy"), ("kdpp", "native"))
    ratio_row("torch-cluster / torch FPS", ("fps", "torch_cluster"), ("fps", "torch"))
    if not has_torch_cluster():
        lines += ["", "torch-cluster was not installed: no torch-cluster FPS row."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
