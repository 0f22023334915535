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


def test_the_features_data_set_reads_in_the_main_jobs_loader(tmp_path):
    from sgs_tad.data import ActivityNetDataset

    ann = load().write_features_dataset(tmp_path, videos=8)
    assert len(json.loads(ann.read_text())["database"]) == 8
    ds = ActivityNetDataset(ann, tmp_path, subset="training", mode="features", num_snippets=32)
    assert len(ds) == 6 and ds[0].features.shape == (32, 64)
