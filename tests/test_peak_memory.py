"""Peak memory over the run (issue 20, F6): no per-phase reset of the CUDA peak, allocated and
reserved on CUDA, RSS on the CPU. CUDA is faked: torch.cuda's counters are monkeypatched."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from sgs_tad.training.metrics import PeakMemory, PhaseTimer


class FakeCuda:
    """torch.cuda's peak counters: ``use(n)`` allocates n bytes and frees them again."""

    def __init__(self, monkeypatch) -> None:
        self.current = 0
        self.peak = {"allocated": 0, "reserved": 0}
        self.resets = 0
        for name, fn in {
            "is_available": lambda: True,
            "synchronize": lambda device=None: None,
            "reset_peak_memory_stats": self.reset,
            "max_memory_allocated": lambda device=None: self.peak["allocated"],
            "max_memory_reserved": lambda device=None: self.peak["reserved"],
        }.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def use(self, n: int) -> None:
        self.peak["allocated"] = max(self.peak["allocated"], n)
        self.peak["reserved"] = max(self.peak["reserved"], 2 * n)

    def reset(self, device=None) -> None:
        self.resets += 1
        self.peak = {"allocated": self.current, "reserved": self.current}


def test_phase_timer_keeps_the_cuda_peak_of_the_run(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    timer = PhaseTimer(torch.device("cuda", 0))
    with timer.phase("encode"):
        cuda.use(1000)
    with timer.phase("update"):
        cuda.use(300)
    with timer.phase("optimizer"):
        cuda.use(10)
    assert cuda.resets == 0, "the phase timer reset the CUDA peak"
    # What a script reads after training is the run's peak, not the last phase's.
    assert torch.cuda.max_memory_allocated() == 1000
    assert timer.peak_memory() == 1000
    assert timer.memory.read() == {"allocated": 1000, "reserved": 2000}
    summary = timer.summary()  # the phase that set the run's peak says so; the others did not
    assert summary["encode"]["peak_memory_bytes"] == 1000
    assert summary["update"]["peak_memory_bytes"] is None


def test_peak_memory_survives_a_reset_by_someone_else(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    peak = PeakMemory(torch.device("cuda", 0))
    cuda.use(500)
    peak.update()
    cuda.reset()  # e.g. the auto-K probe measuring one snippet
    cuda.use(200)
    assert peak.read() == {"allocated": 500, "reserved": 1000}
    assert peak.as_mb() == {"allocated_mb": 500 / 2**20, "reserved_mb": 1000 / 2**20}
    assert PeakMemory.label("reserved_mb") == "peak CUDA reserved MB"


def test_peak_memory_on_the_cpu_is_the_peak_rss():
    peak = PeakMemory(torch.device("cpu"))
    factor = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    (rss,) = peak.read().values()
    assert rss >= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * factor > 0
    assert list(peak.as_mb()) == ["rss_mb"]
    assert PeakMemory.label("rss_mb") == "peak RSS MB"


def test_unknown_label_names_the_known_ones():
    with pytest.raises(ValueError, match="rss_mb"):
        PeakMemory.label("vram_mb")


def _main_job_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "main_job.py"
    spec = importlib.util.spec_from_file_location("main_job_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("metrics", "heading"),
    [
        ({"peak_memory_mb": 80.0, "settings": {"device": "cuda:0"}}, "peak CUDA allocated MB"),
        ({"peak_memory": {"allocated_mb": 80.0, "reserved_mb": 96.0}}, "peak CUDA reserved MB"),
        ({"peak_memory_mb": 80.0, "settings": {"device": "cpu"}}, "peak RSS MB"),
    ],
)
def test_main_job_benchmark_labels_cuda_memory_as_cuda_memory(metrics, heading):
    bench = _main_job_module()
    run = {"train_s": 1.0, "train_cpu_s": 1.0, "map": 10.0, "peak": bench.peaks(metrics),
           "phases": dict.fromkeys(bench.PHASES, 1.0)}  # fmt: skip
    text = bench.table({"naive": [run], "sgs": [run]})
    assert heading in text.splitlines()[0]
    if "cuda" in heading.lower():
        assert "RSS" not in text
