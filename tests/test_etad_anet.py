"""Smoke runs of the main job, examples/etad_anet.py, on a tiny synthetic set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "etad_anet.py"
TINY = ["--num-videos", "8", "--num-snippets", "16", "--batch-size", "2", "--no-progress"]


def run(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("etad_anet")
    data, out = root / "data", root / "out"
    run("--epochs", "1", "--data-root", data, "--output-dir", out, *TINY)
    return data, out


def test_one_epoch_writes_every_output(trained: tuple[Path, Path]) -> None:
    data, out = trained
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mAP@0.5", "mAP@0.75", "mAP@0.95", "average_mAP", "peak_memory_mb"):
        assert key in metrics
    assert 0.0 <= metrics["average_mAP"] <= 1.0
    predictions = json.loads((out / "predictions.json").read_text())
    annotations = json.loads((data / "annotations.json").read_text())["database"]
    validation = {k for k, v in annotations.items() if v["subset"] == "validation"}
    assert set(predictions["results"]) == validation
    some = next(iter(predictions["results"].values()))
    assert {"segment", "score", "label"} <= set(some[0])
    assert (out / "predictions.png").stat().st_size > 1000
    assert (out / "metrics.jsonl").read_text().strip()
    assert list((out / "checkpoints").glob("*.pt"))
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_resume_continues_from_the_checkpoint(trained: tuple[Path, Path]) -> None:
    data, out = trained
    proc = run("--epochs", "2", "--resume", "--data-root", data, "--output-dir", out, *TINY)
    steps = sorted(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("*.pt"))
    assert steps[-1] == 2 * steps[0], steps  # one more epoch of the same number of steps
    assert "average" in proc.stdout


def test_predict_one_video(trained: tuple[Path, Path]) -> None:
    data, out = trained
    video = sorted((data / "videos").iterdir())[0]
    proc = run("predict", video, "--model", out / "model.pt", "--top", "3")
    lines = [line for line in proc.stdout.splitlines() if " s - " in line]
    assert 1 <= len(lines) <= 3


def test_predict_rejects_a_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "predict", str(tmp_path / "nope.mp4")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no video file" in proc.stderr


def test_features_mode_trains_the_detector_only(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    import numpy as np

    data, _ = trained
    annotations = data / "annotations.json"
    features = tmp_path / "features"
    features.mkdir()
    rng = np.random.default_rng(0)
    for video_id in json.loads(annotations.read_text())["database"]:
        np.save(features / f"v_{video_id}.npy", rng.standard_normal((20, 24)).astype("float32"))
    out = tmp_path / "out"
    run("--epochs", "1", "--features", features, "--annotations", annotations,
        "--output-dir", out, *TINY)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["average_mAP"] <= 1.0
    assert metrics["settings"]["features"] == str(features)
