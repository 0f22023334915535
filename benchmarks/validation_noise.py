"""How much of a run's average mAP is the luck of which validation videos were drawn.

For finished main-job runs (``metrics.json`` + ``predictions.json``, e.g. from
``benchmarks/e2e_results.py``) it resamples the validation videos and re-scores the stored
predictions (no training, no model). Each draw picks one new validation set for every run (the
bootstrap: as many videos as there are, with replacement), so the spread over draws of a row's
mean over seeds is the standard error that the choice of validation videos adds, and the same
for the paired difference of two rows (here it mostly cancels: both rows see the same videos).
Subsets of 24 distinct videos show what the earlier 24-video validation split gave. The
seed-to-seed spread is the other part of the noise (training).

    python benchmarks/validation_noise.py outputs/results-final --rows frozen sgs0.3 sgs1.0

Prints a Markdown table (docs/results.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sgs_tad.evaluation import evaluate_detection


def load(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics, json.loads((run / "predictions.json").read_text())


def annotation_file(metrics: dict[str, Any]) -> Path:
    settings = metrics["settings"]
    if settings.get("annotations"):
        return Path(settings["annotations"])
    return Path(settings["data_root"]) / "annotations.json"


def score(gt: dict[str, Any], preds: dict[str, Any], ids: list[str]) -> float:
    """Average mAP on the videos ``ids`` (a repeated id counts again, under a new name)."""
    db, res = {}, {}
    for k, vid in enumerate(ids):
        db[f"{vid}#{k}"] = gt["database"][vid]
        res[f"{vid}#{k}"] = preds["results"].get(vid, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return 100 * evaluate_detection({"database": db}, {"results": res}).average_mAP


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder of <row>-seed<s> run folders")
    p.add_argument("--rows", nargs="+", default=["frozen", "sgs0.3", "sgs1.0"])
    p.add_argument("--base", default="frozen", help="row the paired differences are taken to")
    p.add_argument("--seeds", nargs="+", type=int, default=[5, 6, 7, 8, 9])
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--subset-size", type=int, default=24)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    runs = {(r, s): load(args.out / f"{r}-seed{s}") for r in args.rows for s in args.seeds
            if (args.out / f"{r}-seed{s}" / "predictions.json").is_file()}  # fmt: skip
    if not runs:
        raise SystemExit(f"no finished runs of {args.rows} in {args.out}")
    gt = json.loads(annotation_file(next(iter(runs.values()))[0]).read_text())
    val = sorted(v for v, e in gt["database"].items() if e["subset"] == "validation")
    n = len(val)
    boot = [list(rng.choice(val, size=n, replace=True)) for _ in range(args.draws)]
    small = [
        list(rng.choice(val, size=args.subset_size, replace=False)) for _ in range(args.draws)
    ]
    print(f"{n} validation videos, {args.draws} draws; seeds {args.seeds}\n")
    # Each draw resamples the videos once for every run, as a new validation set would.
    scores = {
        key: (np.array([score(gt, preds, ids) for ids in boot]),
              np.array([score(gt, preds, ids) for ids in small]))
        for key, (_, preds) in runs.items()
    }  # fmt: skip
    print(
        "| row | mean | seed-to-seed SD | SE over seeds | validation-sample SE of the mean "
        f"({n} videos) | the same with {args.subset_size} videos | paired Δ to {args.base} | "
        "its SE over seeds | its validation-sample SE |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        seeds = [s for s in args.seeds if (row, s) in runs]
        if not seeds:
            continue
        values = [100 * runs[row, s][0]["average_mAP"] for s in seeds]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        mean_boot = np.mean([scores[row, s][0] for s in seeds], axis=0)
        mean_small = np.mean([scores[row, s][1] for s in seeds], axis=0)
        cells = [f"{statistics.fmean(values):.2f}", f"{sd:.2f}", f"{sd / len(seeds) ** 0.5:.2f}",
                 f"{mean_boot.std(ddof=1):.2f}", f"{mean_small.std(ddof=1):.2f}"]  # fmt: skip
        paired = [s for s in seeds if (args.base, s) in runs]
        if row != args.base and paired:
            diffs = [100 * (runs[row, s][0]["average_mAP"] - runs[args.base, s][0]["average_mAP"])
                     for s in paired]  # fmt: skip
            d_boot = np.mean([scores[row, s][0] - scores[args.base, s][0] for s in paired], 0)
            d_sd = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
            cells += [
                f"{statistics.fmean(diffs):+.2f}",
                f"{d_sd:.2f}",
                f"{d_boot.std(ddof=1):.2f}",
            ]
        else:
            cells += ["–", "–", "–"]
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
