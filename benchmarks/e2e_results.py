"""The experiment of docs/results.md: ETAD on the synthetic set, every setting over several seeds.

Every run is ``examples/etad_anet.py`` with the listed arguments, in its own process (so peak
memory is its own), on the same synthetic data (data seed 0) and a training seed from
``--seeds``. Settings compared by default (the rows of issue 11 and of docs/results.md): frozen
encoder (γ = 0), SGS γ = 0.1, 0.3, 0.5 and 1.0, naive end to end; APS 2, 6 (the default), 20
and 100 %; the five snippet samplers at γ = 0.3. ``--only`` picks rows, including the
diagnostics that are not in the default list (``unbiased``, ``sgs0.3-elr2e-6``, ...).

The runs go in seed-major order (every setting with the first seed, then the second...), so an
interrupted experiment still has whole seeds; ``--reuse`` keeps the finished runs and only does
the missing ones (and re-evaluates runs whose numbers predate the current evaluation, from
their ``model.pt``). The table gives the mean ± sample standard deviation over seeds of each
metric, the standard error of the average mAP, the paired difference to the frozen encoder and
the encoder's gradient norm and update size (``sgs_tad.training.callbacks.GradientStats``), and
writes ``docs/results_<section>.png`` (each seed a dot).

To reproduce the main table of docs/results.md (65 runs, about 95 minutes on 2 CPU cores, two at
a time with one thread each; seeds 5-9 were not used to choose any setting)::

    python benchmarks/e2e_results.py                          # writes docs/results.md
    python benchmarks/e2e_results.py --reuse                  # finish an interrupted run
    python benchmarks/e2e_results.py --only frozen unbiased sgs0.3-elr2e-6 --seeds 5 6 7 \
        --reuse --section diagnostics                         # the diagnostic rows
    python benchmarks/e2e_results.py --pretrained none --seeds 0 1 2 --out outputs/results \
        --section results-table                               # the from-scratch table

``--pretrained`` is passed to every run (``etad_anet.py --pretrained``); with ``auto`` (the
main job's default) the encoder is pretrained once (``examples/pretrain_encoder.py``, cached)
before the runs start. The from-scratch tables of docs/results.md are ``--pretrained none``.

``--layout thumos`` is passed to every run as well: the THUMOS-like set (several classes, many
short instances per video, generated once into ``data/synthetic-thumos`` unless ``--data-root``
says otherwise), sliding windows, mAP at tIoU 0.3:0.1:0.7 (the columns follow). The paper's
Table 11 pattern (THUMOS-14: frozen < γ = 0.3 ≈ γ = 1.0)::

    python benchmarks/e2e_results.py --layout thumos --only frozen sgs0.3 sgs1.0 \
        --seeds 5 6 7 --out outputs/results-thumos --section thumos
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from sgs_tad.data import generate_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "etad_anet.py"
sys.path.insert(0, str(SCRIPT.parent))
# its option parser (settings of a run) and evaluation version (older runs are re-evaluated)
from etad.data import synthetic_options  # noqa: E402
from etad.evaluation import EVALUATION_VERSION  # noqa: E402
from etad.options import LAYOUTS, parse_args, pretrain_config, pretrains  # noqa: E402
from pretrain_encoder import pretrain_encoder  # noqa: E402

RUNS: dict[str, tuple[str, list[str]]] = {
    "frozen": ("frozen encoder (γ = 0)", ["--ratio", "0"]),
    "sgs0.1": ("SGS γ = 0.1", ["--ratio", "0.1"]),
    "sgs0.3": ("SGS γ = 0.3 (default)", ["--ratio", "0.3"]),
    "sgs0.5": ("SGS γ = 0.5", ["--ratio", "0.5"]),
    "sgs1.0": ("SGS γ = 1.0", ["--ratio", "1.0"]),
    "naive": ("naive end to end", ["--naive"]),
    "aps0.02": ("SGS γ = 0.3, APS 2 %", ["--ratio", "0.3", "--aps-ratio", "0.02"]),
    "aps0.2": ("SGS γ = 0.3, APS 20 %", ["--ratio", "0.3", "--aps-ratio", "0.2"]),
    "aps1.0": ("SGS γ = 0.3, APS 100 %", ["--ratio", "0.3", "--aps-ratio", "1.0"]),
    "grid": ("SGS γ = 0.3, grid snippets", ["--snippet-sampler", "grid"]),
    "block": ("SGS γ = 0.3, block snippets", ["--snippet-sampler", "block"]),
    "fps": ("SGS γ = 0.3, FPS snippets", ["--snippet-sampler", "fps"]),
    "kdpp": ("SGS γ = 0.3, k-DPP snippets", ["--snippet-sampler", "kdpp"]),
    # not in the default list: diagnostics (docs/results.md)
    "unbiased": ("SGS γ = 0.3, grad_scale unbiased", ["--grad-scale", "unbiased"]),
    "sgs0.3-elr2e-6": ("SGS γ = 0.3, encoder lr 2e-6", ["--ratio", "0.3", "--encoder-lr", "2e-6"]),
    # not in the default list: γ = 0.3 given about the training time of γ = 1.0
    "sgs0.3-15ep": ("SGS γ = 0.3, 15 epochs", ["--ratio", "0.3", "--epochs", "15"]),
    # not in the default list: a pretrained encoder fine-tuned 10x faster than the paper's ratio
    "sgs0.3-elr2e-5": ("SGS γ = 0.3, encoder lr 2e-5", ["--ratio", "0.3", "--encoder-lr", "2e-5"]),
    "sgs1.0-elr2e-5": ("SGS γ = 1.0, encoder lr 2e-5", ["--ratio", "1.0", "--encoder-lr", "2e-5"]),
}
EXTRA_RUNS = ("unbiased", "sgs0.3-elr2e-6", "sgs0.3-15ep", "sgs0.3-elr2e-5", "sgs1.0-elr2e-5")
DEFAULT_RUNS = [n for n in RUNS if n not in EXTRA_RUNS]

#: (metrics.json key, column title, scale, decimals); the mAP columns are the layout's
#: (:data:`MAP_COLUMNS`), set by :func:`main`
COLUMNS: list[tuple[str, str, float, int]] = [
    ("mAP@0.5", "mAP@0.5", 100.0, 1),
    ("mAP@0.75", "mAP@0.75", 100.0, 1),
    ("mAP@0.95", "mAP@0.95", 100.0, 1),
    ("average_mAP", "average mAP", 100.0, 1),
    ("class_agnostic_mAP", "class-agnostic avg. mAP", 100.0, 1),
    ("video_accuracy", "video accuracy %", 100.0, 0),
    ("peak_memory_mb", "peak RSS MB", 1.0, 0),
    ("train_time_s", "train s", 1.0, 0),
]
#: The tIoU columns of each ``--layout`` (THUMOS: 0.3:0.1:0.7, average over those five).
MAP_COLUMNS: dict[str, list[tuple[str, str, float, int]]] = {
    "anet": COLUMNS[:3],
    "thumos": [(f"mAP@{t}", f"mAP@{t}", 100.0, 1) for t in ("0.3", "0.4", "0.5", "0.6", "0.7")],
}


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}-seed{seed}"


#: The settings a reused run must share with the one asked for.
COMPARED = (
    "seed", "ratio", "aps_ratio", "snippet_sampler", "proposal_sampler", "naive", "epochs",
    "num_videos", "data_seed", "class_head", "schedule", "encoder_lr", "frozen_stages",
    "encoder_delay", "detector_lr", "val_fraction", "grad_scale", "layout",
)  # fmt: skip
#: The value of a COMPARED setting in a metrics.json written before that setting existed.
LEGACY = {"layout": "anet"}

#: Arguments given to every run (``--pretrained``, ``--layout``), set by :func:`main`.
EXTRA: list[str] = []


def run_args(name: str) -> list[str]:
    """The main job's arguments of setting ``name`` (plus the ones every run gets)."""
    return [*RUNS[name][1], *EXTRA]


def reusable(metrics: dict[str, Any], name: str, seed: int) -> bool:
    """Whether a finished run's ``metrics.json`` has the settings asked for."""
    want = vars(parse_args([*run_args(name), "--seed", str(seed)]))
    have = metrics.get("settings", {})
    same = all(have.get(k, LEGACY.get(k)) == want[k] for k in COMPARED)
    weights = None if want["weights"] is None else str(want["weights"])
    return same and have.get("weights") == weights


def reevaluate(target: Path) -> dict[str, Any]:
    """Bring an older run's evaluation numbers up to date from its model.pt."""
    fresh = target / "evaluation.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "evaluate", "--model", str(target / "model.pt"),
         "--output", str(fresh)],
        check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    metrics = json.loads((target / "metrics.json").read_text())
    metrics.update(json.loads(fresh.read_text()))
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run(name: str, seed: int, out: Path, data: Path, reuse: bool) -> dict[str, Any]:
    """One run of the main job; its metrics.json."""
    target = run_dir(out, name, seed)
    metrics_file = target / "metrics.json"
    if reuse and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        if reusable(metrics, name, seed):
            if metrics.get("evaluation_version", 1) < EVALUATION_VERSION:
                metrics = reevaluate(target)
            return metrics
        print(f"{name} seed {seed}: {target} has other settings; running it again", flush=True)
    args = ["--no-progress", "--seed", str(seed), "--data-root", str(data)]
    args += ["--output-dir", str(target), *run_args(name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads(metrics_file.read_text())
    print(
        f"{name:8s} seed {seed}: average mAP {100 * metrics['average_mAP']:.2f} "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return metrics


def summarise(values: list[float], scale: float, decimals: int) -> str:
    scaled = [scale * v for v in values]
    mean = statistics.fmean(scaled)
    if len(scaled) < 2:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {statistics.stdev(scaled):.{decimals}f}"


def stat(metrics: dict[str, Any], key: str) -> float:
    """A median of the run's GradientStats (metrics.json ``grad_stats``); NaN if not recorded."""
    return float(metrics.get("grad_stats", {}).get(key, float("nan")))


def paired(runs: list[dict[str, Any]], base: list[dict[str, Any]]) -> str:
    """Mean ± standard error over seeds of the average-mAP difference to the same seed's base."""
    diffs = [100 * (r["average_mAP"] - b["average_mAP"]) for r, b in zip(runs, base)]
    if len(diffs) < 2:
        return f"{statistics.fmean(diffs):+.1f}"
    return f"{statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.1f}"


def standard_error(runs: list[dict[str, Any]]) -> str:
    values = [100 * r["average_mAP"] for r in runs]
    return f"{statistics.stdev(values) / len(values) ** 0.5:.2f}" if len(values) > 1 else "–"


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    """Mean ± standard deviation per column; standard error of the average mAP; the paired
    difference to the frozen encoder (mean ± standard error); the encoder's median gradient
    norm (before clipping) and relative update per step."""
    extra = ["SE", "paired Δ vs frozen", "enc. grad norm", "enc. update ×1e-4"]
    head = "| setting | " + " | ".join([c[1] for c in COLUMNS] + extra) + " | command |"
    lines = [head, "|---" * (len(COLUMNS) + len(extra) + 2) + "|"]
    base = rows.get("frozen")
    for name, runs in rows.items():
        cells = []
        for key, _, scale, decimals in COLUMNS:
            cell = summarise([r[key] for r in runs], scale, decimals)
            cells.append(f"**{cell}**" if key == "average_mAP" else cell)
        cells.append(standard_error(runs))
        cells.append("–" if base is None or name == "frozen" else paired(runs, base))
        cells.append(summarise([stat(r, "grad_norm/encoder") for r in runs], 1.0, 2))
        cells.append(summarise([stat(r, "update/encoder") for r in runs], 1e4, 2))
        command = " ".join(["python examples/etad_anet.py", *run_args(name)]).strip()
        lines.append(f"| {RUNS[name][0]} | " + " | ".join(cells) + f" | `{command}` |")
    return "\n".join(lines)


def seed_table(rows: dict[str, list[dict[str, Any]]], seeds: list[int]) -> str:
    lines = ["| setting | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|---" * (len(seeds) + 1) + "|")
    for name, runs in rows.items():
        cells = [f"{100 * r['average_mAP']:.2f}" for r in runs]
        lines.append(f"| {RUNS[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Each row's average mAP minus the frozen encoder's of the same seed (each seed a dot, the
    mean with its standard error), or the average mAP itself when there is no frozen row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows.get("frozen")
    names = [n for n in rows if base is None or n != "frozen"]
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(names) + 1.3))
    for i, name in enumerate(names):
        if base is None:
            values = [100 * r["average_mAP"] for r in rows[name]]
        else:
            values = [100 * (r["average_mAP"] - b["average_mAP"])
                      for r, b in zip(rows[name], base)]  # fmt: skip
        mean = statistics.fmean(values)
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        ax.errorbar(mean, i, xerr=se, fmt="o", color="tab:blue", capsize=3, zorder=3)
        ax.plot(values, [i] * len(values), ".", color="0.55", markersize=5, zorder=2)
    if base is not None:
        ax.axvline(0.0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([RUNS[n][0] for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(
        "average mAP minus the frozen encoder's, same seed (points)"
        if base is not None
        else "average mAP (%)",
        fontsize=8,
    )
    ax.set_title("each seed a grey dot; mean ± standard error in blue", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[5, 6, 7, 8, 9])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--reuse", action="store_true", help="keep runs that already finished")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder of the runs (default outputs/results-final, with --layout thumos "
        "outputs/results-thumos)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="the synthetic set (default data/synthetic, with --layout thumos "
        "data/synthetic-thumos)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="anet",
        help="pass --layout to every run: anet (default) or thumos (sliding windows, "
        "THUMOS-like data, mAP at tIoU 0.3:0.1:0.7)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="{auto,none,PATH}",
        help="pass --pretrained to every run (default: the main job's default)",
    )
    parser.add_argument(
        "--section",
        default="pretrained",
        help="the <!-- SECTION --> ... <!-- /SECTION --> block of --output to replace (and the "
        "plot's name: results_SECTION.png, results.png for results-table)",
    )
    args = parser.parse_args()
    if args.out is None:  # one folder per layout: the run folders are named alike
        args.out = (
            ROOT / "outputs" / ("results-final" if args.layout == "anet" else "results-thumos")
        )
    names = args.only or DEFAULT_RUNS
    # Generate the data once before the parallel runs (they would race to write it), with the
    # main job's defaults so that every run reuses this set.
    if args.pretrained is not None:
        EXTRA[:] = ["--pretrained", args.pretrained]
    if args.layout != "anet":
        EXTRA.extend(["--layout", args.layout])
    COLUMNS[:3] = MAP_COLUMNS[args.layout]
    defaults = parse_args(EXTRA)
    if args.data_root is None:
        args.data_root = ROOT / defaults.data_root
    generate_synthetic_dataset(args.data_root, **synthetic_options(defaults))
    if pretrains(defaults):  # once, before the runs (they would race to write it)
        pretrain_encoder(pretrain_config(defaults), defaults.weights)
    jobs = [(n, s) for s in args.seeds for n in names]  # seed-major
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            job: pool.submit(run, job[0], job[1], args.out, args.data_root, args.reuse)
            for job in jobs
        }
        results = {job: f.result() for job, f in futures.items()}
    rows = {n: [results[(n, s)] for s in args.seeds] for n in names}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({n: dict(zip(map(str, args.seeds), r)) for n, r in rows.items()}, indent=1)
    )
    env = (
        f"Python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"{args.jobs} runs at a time with one thread each; seeds {args.seeds} "
        f"(mean ± standard deviation over seeds)"
    )
    text = f"{env}\n\n{table(rows)}\n\nAverage mAP of each seed:\n\n{seed_table(rows, args.seeds)}"
    print(text)
    suffix = "" if args.section == "results-table" else f"_{args.section}"
    if not args.no_plot:
        try:
            plot(rows, args.output.with_name(f"{args.output.stem}{suffix}.png"))
        except ImportError as err:
            print(f"no plot: {err} (pip install 'sgs_tad[plot]')")
    marker, end = f"<!-- {args.section} -->", f"<!-- /{args.section} -->"
    doc = args.output.read_text() if args.output.exists() else "# Results\n"
    if marker not in doc:
        doc += f"\n{marker}\n{end}\n"
    before, _, rest = doc.partition(marker)
    after = rest.split(end, 1)[-1]
    args.output.write_text(f"{before}{marker}\n{text}\n{end}{after}")


if __name__ == "__main__":
    main()
