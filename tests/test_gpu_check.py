"""benchmarks/gpu_check.py is ready for a GPU machine: without CUDA it says so and exits 0;
its steps and its features data set build on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_it_exits_cleanly_saying_no_gpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no GPU" in proc.stdout


def test_dry_run_lists_every_step():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for step in ("cuda tests", "train + evaluate", "evaluate model.pt", "TSM-R50 table"):
        assert step in proc.stdout
    assert "3,8,224,224" in proc.stdout and "16,64" in proc.stdout
    assert "--amp fp16" in proc.stdout


def _row(method, n, *, k=4, ratio=1.0, peak=None, time_s=1.0, oom=False):
    row = {"method": method, "n": n, "k": k, "ratio": ratio, "time_s": time_s}
    if oom:
        return {**row, "oom": True}
    return {**row, "cuda_peak_mb": peak, "cuda_reserved_mb": 2 * peak, "saved_mb": peak}


def test_targets_from_a_fabricated_table():
    """The issue's targets at N = 64: SGS (K = 4, γ = 0.3) peak ≤ 0.1× and time ≤ 1.0× naive;
    rows at other N, K, γ and kept graphs are not the ones compared."""
    evaluate = load().evaluate_targets
    base = [_row("naive", 16, k=16, peak=100.0, time_s=0.1),
            _row("naive", 64, k=64, peak=30000.0, time_s=2.0),
            _row("ckpt", 64, peak=1000.0, time_s=2.6),
            _row("sgs", 64, ratio=1.0, peak=900.0, time_s=2.4),
            _row("sgs", 16, ratio=0.3, peak=1.0, time_s=0.01)]  # fmt: skip
    good = _row("sgs", 64, ratio=0.3, peak=2500.0, time_s=1.2)
    (_, peak_ok, peak_detail), (_, time_ok, _) = evaluate([*base, good])
    assert peak_ok and time_ok and "0.083×" in peak_detail
    kept = {**_row("sgs", 64, ratio=0.3, peak=9000.0, time_s=9.0), "keep": "all"}
    assert all(ok for _, ok, _ in evaluate([*base, kept, good]))
    too_big = _row("sgs", 64, ratio=0.3, peak=3100.0, time_s=1.2)
    assert [ok for _, ok, _ in evaluate([*base, too_big])] == [False, True]
    too_slow = _row("sgs", 64, ratio=0.3, peak=2500.0, time_s=2.1)
    assert [ok for _, ok, _ in evaluate([*base, too_slow])] == [True, False]


def test_targets_with_missing_or_out_of_memory_rows():
    evaluate = load().evaluate_targets
    naive = _row("naive", 64, k=64, peak=30000.0, time_s=2.0)
    sgs = _row("sgs", 64, ratio=0.3, peak=2500.0, time_s=1.2)
    assert [ok for _, ok, _ in evaluate([])] == [False, False]
    assert [ok for _, ok, _ in evaluate([naive])] == [False, False]
    assert [ok for _, ok, _ in evaluate([naive, _row("sgs", 64, ratio=0.3, oom=True)])] == [
        False, False]  # fmt: skip
    result = evaluate([_row("naive", 64, k=64, oom=True), sgs])
    assert [ok for _, ok, _ in result] == [True, False] and "out of memory" in result[1][2]


def test_the_features_data_set_reads_in_the_main_jobs_loader(tmp_path):
    from sgs_tad.data import ActivityNetDataset

    ann = load().write_features_dataset(tmp_path, videos=8)
    assert len(json.loads(ann.read_text())["database"]) == 8
    ds = ActivityNetDataset(ann, tmp_path, subset="training", mode="features", num_snippets=32)
    assert len(ds) == 6 and ds[0].features.shape == (32, 64)
