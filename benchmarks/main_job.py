"""The main job side by side: SGS against naive end-to-end training, phase by phase.

Runs ``examples/etad_anet.py`` (default data and model) once per setting and repeat, each in a
fresh process, interleaved (``naive, sgs, ..., naive, sgs, ...``) so that a slow spell of a
shared machine hits every setting alike, and prints the training time relative to naive, the
time of each phase (encode, detector, update, optimizer), peak memory and the average mAP::

    python benchmarks/main_job.py --epochs 3 --repeats 2
    python benchmarks/main_job.py --epochs 3 --write-docs     # also updates docs/benchmarks.md

Settings: ``naive`` (``--naive``), ``sgs-k`` (γ = 0.3 with phase 1 in micro-batches of K, the
paper code's way), ``sgs`` (γ = 0.3, the defaults: unsampled snippets in phase-1 calls of 8 K)
``sgs-keep`` (as ``sgs`` with the sampled micro-batches' graphs kept, ``--keep-graphs all``),
``sgs-noprefix`` (as ``sgs`` with phase 3 re-running the frozen stages too,
``--reuse-frozen-prefix off``, as before it was kept)
``sgs-noprefetch`` (as ``sgs`` with decoding in the encoder's critical path) and
``sgs-nocache`` (as ``sgs`` decoding the file again for every micro-batch, phase 3 included).

Threads: ``--threads auto`` (default) gives torch the cores left after the engine's prefetch
thread (:func:`sgs_tad.training.threads.choose_threads`); several values compare them. With
``--load 0 1`` every run is made idle and beside one CPU-bound process (``while True: pass``),
interleaved, and a second table gives each setting's training time beside the load relative to
idle::

    python benchmarks/main_job.py --epochs 1 --settings naive sgs --threads 2 auto --load 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sgs_tad.training.metrics import PeakMemory
from sgs_tad.training.threads import available_cores, choose_threads

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- main-job:begin -->", "<!-- main-job:end -->"

SETTINGS = {
    "naive": ("naive end to end", ["--naive"]),
    "sgs-k": ("SGS γ = 0.3, phase 1 at K", ["--encode-batch-size", "4"]),
    "sgs": ("SGS γ = 0.3 (default)", []),
    "sgs-keep": ("SGS γ = 0.3, kept graphs", ["--keep-graphs", "all"]),
    "sgs-noprefix": (
        "SGS γ = 0.3, phase 3 re-runs the frozen stages",
        ["--reuse-frozen-prefix", "off"],
    ),
    "sgs-noprefetch": ("SGS γ = 0.3, no prefetching", ["--prefetch", "off"]),
    "sgs-nocache": ("SGS γ = 0.3, no decode cache", ["--decode-cache-mb", "0"]),
}
PHASES = ("encode", "detector", "update", "optimizer")


def resolve_threads(value: str) -> int:
    """``auto``: the cores left after the prefetch thread; else the number given."""
    return choose_threads(decode_threads=1, environ={}) if value == "auto" else int(value)


def run(name: str, args: argparse.Namespace, out: Path, threads: int, load: int) -> dict:
    # "NAME@before": the setting run by the code of --before (its src and examples), in this
    # checkout's folder, so that both read the same data set
    setting, before = name.split("@")[0], name.endswith("@before")
    tree = args.before if before else ROOT
    cmd = [sys.executable, str(tree / "examples" / "etad_anet.py"), "--epochs", str(args.epochs),
           "--output-dir", str(out), "--no-progress", "--seed", str(args.seed),
           *SETTINGS[setting][1], *args.extra]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(tree / "src")}  # fmt: skip
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        for b in busy:
            b.kill()
            b.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "train_s": metrics["train_time_s"],
        "train_cpu_s": metrics["train_cpu_time_s"],
        "peak": peaks(metrics),
        "map": 100 * metrics["average_mAP"],
        "phases": {p: metrics["phases"].get(p, {}).get("seconds", 0.0) for p in PHASES},
    }


def environment(threads: str) -> str:
    import numpy

    cpu = platform.processor() or platform.machine()
    return (f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"torch threads per run: {threads} (of {available_cores()} cores)")  # fmt: skip


def peaks(metrics: dict) -> dict[str, float]:
    """The run's peak memory in MiB by kind: ``allocated_mb`` and ``reserved_mb`` on CUDA,
    ``rss_mb`` on the CPU (:meth:`sgs_tad.training.metrics.PeakMemory.as_mb`). A metrics file
    of a main job that wrote only ``peak_memory_mb`` gets its kind from the device."""
    if metrics.get("peak_memory"):
        return dict(metrics["peak_memory"])
    device = str(metrics.get("settings", {}).get("device", "cpu"))
    return {"allocated_mb" if device.startswith("cuda") else "rss_mb": metrics["peak_memory_mb"]}


def table(results: dict[str, list[dict]]) -> str:
    base = statistics.median(r["train_s"] for r in results["naive"])
    base_phase = {p: statistics.median(r["phases"][p] for r in results["naive"]) for p in PHASES}
    kinds = list(results["naive"][0]["peak"])  # rss_mb, or allocated_mb and reserved_mb
    lines = [
        "| setting | training time | × naive | CPU time | × naive | "
        + " | ".join(f"{p} s" for p in PHASES) + " | "
        + " | ".join(f"{PeakMemory.label(k)} | × naive" for k in kinds) + " | average mAP |",
        "|---|---|---|---|---|" + "---|" * len(PHASES) + "---|---|" * len(kinds) + "---|",
    ]  # fmt: skip
    base_mem = {k: statistics.median(r["peak"][k] for r in results["naive"]) for k in kinds}
    base_cpu = statistics.median(r["train_cpu_s"] for r in results["naive"])
    for name, runs in results.items():
        t = statistics.median(r["train_s"] for r in runs)
        cpu = statistics.median(r["train_cpu_s"] for r in runs)
        mems = " | ".join(
            f"{m:.0f} | {m / base_mem[k]:.2f}"
            for k in kinds
            for m in [statistics.median(r["peak"][k] for r in runs)]
        )
        phases = " | ".join(
            f"{statistics.median(r['phases'][p] for r in runs):.1f}"
            + ("" if name == "naive" or base_phase[p] < 1.0 else
               f" ({statistics.median(r['phases'][p] for r in runs) / base_phase[p]:.2f}×)")
            for p in PHASES
        )  # fmt: skip
        maps = [r["map"] for r in runs if r["map"] is not None]
        mean_map = f"{statistics.mean(maps):.1f}" if maps else "-"
        label = SETTINGS[name.split("@")[0]][0] + (" (before)" if name.endswith("@before") else "")
        lines.append(f"| {label} | {t:.1f} s | **{t / base:.2f}** | {cpu:.1f} s | "
                     f"{cpu / base_cpu:.2f} | {phases} | {mems} | {mean_map} |")  # fmt: skip
    return "\n".join(lines)


def load_table(
    every: dict[tuple[str, int], dict[str, list[dict]]], args: argparse.Namespace
) -> str:
    """Training time beside ``load`` busy processes relative to idle, per threads and setting."""
    idle = args.load[0]
    lines = ["| threads | setting | " + " | ".join(f"load {x}: s" for x in args.load)
             + " | " + " | ".join(f"load {x} / load {idle}" for x in args.load[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(args.load) - 1)]  # fmt: skip
    for t in args.threads:
        for name in args.settings:
            times = [statistics.median(r["train_s"] for r in every[(t, x)][name])
                     for x in args.load]  # fmt: skip
            ratios = " | ".join(f"**{v / times[0]:.2f}**" for v in times[1:])
            label = SETTINGS[name.split("@")[0]][0] + (" (before)" if "@" in name else "")
            lines.append(f"| {t} ({resolve_threads(t)}) | {label} | "
                         + " | ".join(f"{v:.1f}" for v in times) + f" | {ratios} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        nargs="+",
        default=["auto"],
        help="torch threads per run, 'auto' (the cores left after the prefetch thread, "
        "robust to other load) or a number; several values are compared",
    )
    p.add_argument(
        "--load",
        nargs="+",
        type=int,
        default=[0],
        help="CPU-bound processes run beside each run (e.g. 0 1: idle and loaded, compared)",
    )
    p.add_argument("--settings", nargs="+", default=list(SETTINGS),
                   choices=[*SETTINGS, *(f"{k}@before" for k in SETTINGS)],
                   help="NAME@before runs NAME with the code of --before")  # fmt: skip
    p.add_argument("--before", type=Path, default=None,
                   help="a checkout of earlier code (git archive COMMIT | tar -x -C DIR): "
                   "settings NAME@before run its examples/etad_anet.py and src, interleaved "
                   "with the others, for a before/after split from one command")  # fmt: skip
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further options for every run of the main job")  # fmt: skip
    p.add_argument("--write-docs", action="store_true", help=f"update {DOC.relative_to(ROOT)}")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "main_job.json")
    args = p.parse_args()
    if any(n.endswith("@before") for n in args.settings) and args.before is None:
        p.error("NAME@before settings need --before DIR (a checkout of the earlier code)")
    if "naive" not in args.settings:
        args.settings.insert(0, "naive")
    # Make sure the data set exists before timing anything (the first run would generate it).
    combos = [(t, load) for t in args.threads for load in args.load]
    every: dict[tuple[str, int], dict[str, list[dict]]] = {
        c: {name: [] for name in args.settings} for c in combos
    }
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for t, load in combos:
                for name in args.settings:
                    out = Path(tmp) / f"{name}-{t}-{load}-{r}"
                    res = run(name, args, out, resolve_threads(t), load)
                    every[(t, load)][name].append(res)
                    print(f"repeat {r} threads {t} load {load} {name}: {res['train_s']:.1f} s "
                          f"({res['train_cpu_s']:.1f} s CPU), peak {res['peak']} MB, "
                          f"phases {res['phases']}", flush=True)  # fmt: skip
    text = "\n\n".join(
        (f"threads {t} ({resolve_threads(t)}), {load} busy process(es) beside:\n" if
         len(combos) > 1 else "") + table(every[(t, load)]) for t, load in combos
    )  # fmt: skip
    if len(args.load) > 1:
        text += "\n\n" + load_table(every, args)
    command = "python benchmarks/main_job.py " + " ".join(sys.argv[1:])
    env = environment(", ".join(f"{t} ({resolve_threads(t)})" for t in args.threads))
    print(f"\n{text}\n\n{env}\n{command}")
    args.json.write_text(json.dumps({"environment": env, "command": command,
                                     "results": {f"threads={t} load={load}": res
                                                 for (t, load), res in every.items()}},
                                    indent=2))  # fmt: skip
    if args.write_docs:
        block = (f"{BEGIN}\n## The main job, SGS against naive\n\n"
                 f"`{command}` ({args.epochs} epochs of the default main job, median of "
                 f"{args.repeats} interleaved runs, each in a fresh process; training only, "
                 f"evaluation excluded). Machine: {env}.\n\n{text}\n{END}")  # fmt: skip
        doc = DOC.read_text()
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip() + "\n\n" + block + "\n"
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
