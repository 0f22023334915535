"""The experiment of docs/results.md: ETAD on the synthetic set, one run per setting.

Every row is one run of ``examples/etad_anet.py`` with the listed arguments, in its own process
(so peak memory is its own), on the same synthetic data and seed. Settings compared: frozen
encoder (γ = 0), SGS γ = 0.3 and 1.0, naive end to end; APS 6 % against 100 %; the five snippet
samplers at γ = 0.3.

To reproduce (about 20 minutes on 2 CPU cores, two runs at a time, one thread each)::

    python benchmarks/e2e_results.py                  # writes docs/results.md
    python benchmarks/e2e_results.py --only frozen sgs0.3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "etad_anet.py"

RUNS: dict[str, tuple[str, list[str]]] = {
    "frozen": ("frozen encoder (γ = 0)", ["--ratio", "0"]),
    "sgs0.3": ("SGS γ = 0.3 (default)", ["--ratio", "0.3"]),
    "sgs1.0": ("SGS γ = 1.0", ["--ratio", "1.0"]),
    "naive": ("naive end to end", ["--naive"]),
    "aps1.0": ("SGS γ = 0.3, APS 100 %", ["--ratio", "0.3", "--aps-ratio", "1.0"]),
    "grid": ("SGS γ = 0.3, grid snippets", ["--snippet-sampler", "grid"]),
    "block": ("SGS γ = 0.3, block snippets", ["--snippet-sampler", "block"]),
    "fps": ("SGS γ = 0.3, FPS snippets", ["--snippet-sampler", "fps"]),
    "kdpp": ("SGS γ = 0.3, k-DPP snippets", ["--snippet-sampler", "kdpp"]),
}


def run(name: str, extra: list[str], out: Path, seed: int, data: Path) -> dict:
    args = ["--no-progress", "--seed", str(seed), "--data-root", str(data)]
    args += ["--output-dir", str(out / name), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / name / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - t0
    metrics["command"] = "python examples/etad_anet.py " + " ".join(
        a for a in extra
    )  # the data/output/seed flags are the runner's defaults
    print(f"{name:8s} average mAP {100 * metrics['average_mAP']:.2f}", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), default=None)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "results")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "synthetic")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    names = args.only or list(RUNS)
    # Generate the data once before the parallel runs (they would race to write it).
    subprocess.run(
        [sys.executable, "-c", "from sgs_tad.data import generate_synthetic_dataset as g; "
         f"g({str(args.data_root)!r}, seed={args.seed})"],
        check=True,
    )  # fmt: skip
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            n: pool.submit(run, n, RUNS[n][1], args.out, args.seed, args.data_root) for n in names
        }
        rows = {n: f.result() for n, f in futures.items()}
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| setting | mAP@0.5 | mAP@0.75 | mAP@0.95 | average mAP | peak RSS MB | train s "
        "| command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        r = rows[n]
        lines.append(
            f"| {RUNS[n][0]} | {100 * r['mAP@0.5']:.2f} | {100 * r['mAP@0.75']:.2f} | "
            f"{100 * r['mAP@0.95']:.2f} | **{100 * r['average_mAP']:.2f}** | "
            f"{r['peak_memory_mb']:.0f} | {r['train_time_s']:.0f} | `{r['command']}` |"
        )
    env = (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {args.jobs} runs at a time with one thread each, seed {args.seed}"
    )
    print("\n".join(lines))
    print(env)
    table = "\n".join(lines)
    marker = "<!-- results-table -->"
    text = args.output.read_text() if args.output.exists() else f"# Results\n\n{marker}\n"
    before, _, rest = text.partition(marker)
    after = rest.split("<!-- /results-table -->", 1)[-1] if rest else ""
    args.output.write_text(f"{before}{marker}\n{env}\n\n{table}\n<!-- /results-table -->{after}")


if __name__ == "__main__":
    main()
