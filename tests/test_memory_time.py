"""benchmarks/memory_time.py: its mixed-precision step is exact against naive backprop, it runs
with --amp on the CPU, and an out-of-memory configuration is a row marked OOM."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "memory_time.py"


def load():
    spec = importlib.util.spec_from_file_location("memory_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_of_sgs_at_ratio_one_is_naives_gradient(amp):
    """The benchmark's step under autocast (fp16 through a GradScaler): SGS at γ = 1 and
    checkpointing give naive end-to-end's gradient, every named parameter."""
    mt = load()
    snippets = torch.randn(1, 8, 3, 2, 16, 16)
    target = torch.rand(1, 2, 8)
    grads = {}
    for method in ("naive", "ckpt", "sgs"):
        torch.manual_seed(0)
        encoder, detector = mt.Encoder(c=16, blocks=1), mt.Detector()
        engine = mt.make_engine({"method": method, "k": 4, "ratio": 1.0}, encoder)
        params = [*encoder.parameters(), *detector.parameters()]
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if amp == "fp16" else None
        optimizer = torch.optim.SGD(params, lr=0.0) if scaler else None
        mt.train_step(engine, detector, snippets, target, amp=amp, scaler=scaler,
                      optimizer=optimizer)  # fmt: skip
        named = [*encoder.named_parameters(), *detector.named_parameters()]
        grads[method] = {name: p.grad.clone() for name, p in named}
    # Under autocast the micro-batches run at another batch size than naive's one call, so
    # low-precision GEMMs may round differently: a tolerance of the precision, not exactness.
    for method in ("ckpt", "sgs"):
        for name, ref in grads["naive"].items():
            got = grads[method][name]
            assert torch.isfinite(got).all(), (method, name)
            scale = ref.abs().max().clamp(min=1e-6)
            assert (got - ref).abs().max() <= 2e-2 * scale, (method, name)


def test_an_out_of_memory_step_is_a_row_marked_oom(monkeypatch):
    """F20: a configuration whose step raises torch.cuda.OutOfMemoryError is reported as a row
    with "oom" (and the table prints OOM for it), not dropped."""
    mt = load()

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(mt, "train_step", boom)
    cfg = {"method": "naive", "n": 8, "k": 8, "ratio": 1.0, "device": "cpu", "repeats": 0,
           "threads": 1, "encoder": "toy", "shape": [3, 2, 16, 16], "iterations": 1}  # fmt: skip
    row = mt.run_one(cfg)
    assert row["oom"] and "out of memory" in row["error"]
    ok = {**cfg, "method": "sgs", "k": 4, "peak_rss_mb": 10.0, "saved_mb": 1.0, "time_s": 0.5,
          "flops": 0.5}  # fmt: skip
    lines = mt.table([row, ok]).splitlines()
    assert "| naive end to end | - | - | - | OOM | - |" in lines[2]
    assert lines[2].count("|") == lines[0].count("|") == lines[3].count("|")
    assert "0.50 | - |" in lines[3]  # no naive to compare with


def test_amp_runs_on_the_cpu_end_to_end(tmp_path):
    """``--amp bf16`` with a tiny encoder on the CPU: every row is measured and written."""
    out, js = tmp_path / "bench.md", tmp_path / "rows.json"
    cmd = [sys.executable, str(SCRIPT), "--shape", "3,2,16,16", "--n", "8", "--k", "4",
           "--ratios", "1.0", "--repeats", "0", "--iterations", "1", "--amp", "bf16",
           "--device", "cpu", "--output", str(out), "--json", str(js)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(js.read_text())["rows"]
    assert [r["method"] for r in rows] == ["naive", "ckpt", "sgs"]
    assert all(r["amp"] == "bf16" and not r.get("oom") for r in rows)
    assert "bf16 autocast" in out.read_text()
