"""Metrics: JSONL/TensorBoard writer, phase timer, progress bar fallback."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from sgs_tad.training.metrics import MetricsWriter, PhaseTimer, ProgressBar, format_bytes


def test_jsonl_records_are_appended_and_nonfinite_values_stay_readable(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write({"loss": torch.tensor(0.5), "lr": [1e-6, 1e-3]}, step=1)
    writer.write({"loss": float("nan")}, step=2)
    writer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 1, "loss": 0.5, "lr": [1e-6, 1e-3]}, {"step": 2, "loss": "nan"}]


def test_disabled_writer_and_no_directory_write_nothing(tmp_path):
    MetricsWriter(tmp_path, enabled=False).write({"loss": 1.0}, step=1)
    MetricsWriter(None).write({"loss": 1.0}, step=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="log_dir"):
        MetricsWriter(None, tensorboard=True)


def test_tensorboard_scalars_including_list_entries(tmp_path):
    pytest.importorskip("tensorboard")
    writer = MetricsWriter(tmp_path, tensorboard=True)
    writer.write({"loss": 1.0, "lr": [0.1, 0.2]}, step=3)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"loss", "lr/0", "lr/1"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("lr/1")[0].value == pytest.approx(0.2)


def test_phase_timer_accumulates_and_shares_sum_to_one():
    timer = PhaseTimer(torch.device("cpu"))
    for _ in range(2):
        with timer.phase("encode"):
            torch.randn(200, 200) @ torch.randn(200, 200)
        with timer.phase("update"):
            pass
    summary = timer.summary()
    assert summary["encode"]["calls"] == 2 and summary["update"]["calls"] == 2
    assert sum(row["share"] for row in summary.values()) == pytest.approx(1.0)
    assert summary["encode"]["peak_memory_bytes"] is None  # not measured on the CPU
    assert "encode" in timer.format_summary() and timer.peak_memory() is None


def test_format_bytes():
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"


def test_progress_bar_without_tqdm_warns_and_does_nothing(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with caplog.at_level("WARNING"):
        bar = ProgressBar(3, enabled=True)
    bar.update(1, loss=0.5)
    bar.close()
    assert "pip install 'sgs_tad[progress]'" in caplog.text
    ProgressBar(3, enabled=False).update(1)


def test_truncate_after_keeps_the_records_up_to_the_resumed_step(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in (1, 2, 3, 4):
        writer.write({"loss": float(step)}, step=step)
    writer.write({"eval/mAP": 0.5}, step=4)
    # the interrupted run's last line was torn mid-write
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 5, "lo')
    assert writer.truncate_after(2) == 4  # steps 3, 4, 4 and the torn line
    writer.write({"loss": 30.0}, step=3)  # the resumed run appends after step 2
    writer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[2]["loss"] == 30.0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_truncate_after_edge_cases(tmp_path):
    writer = MetricsWriter(tmp_path)
    assert writer.truncate_after(0) == 0  # no file yet: nothing to do
    writer.write({"loss": 1.0}, step=1)
    assert writer.truncate_after(1) == 0  # nothing after step 1
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    assert writer.truncate_after(0) == 1 and (tmp_path / "metrics.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        writer.truncate_after(-1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"step": 9}\n')
    assert MetricsWriter(other, enabled=False).truncate_after(0) == 0  # a non-zero rank
    assert (other / "metrics.jsonl").read_text() == '{"step": 9}\n'
    assert MetricsWriter(None).truncate_after(0) == 0


def test_truncate_after_purges_later_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    writer = MetricsWriter(tmp_path, tensorboard=True)
    for step in (1, 2, 3):
        writer.write({"loss": float(step)}, step=step)
    writer.truncate_after(1)
    writer.write({"loss": 20.0}, step=2)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 20.0)]


def test_phase_timer_synchronizes_cuda_only_when_asked(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 0)
    for synchronize, expected in ((False, 0), (True, 4)):
        syncs.clear()
        kwargs = {"synchronize": True} if synchronize else {}  # the default is off
        timer = PhaseTimer(torch.device("cuda"), **kwargs)
        for name in ("encode", "detector"):
            with timer.phase(name):
                pass
        assert len(syncs) == expected
        assert timer.summary()["encode"]["calls"] == 1
