"""The main job never destroys a user's files and never reports an interrupted run as a
success (issue 23): examples/etad_anet.py on a tiny synthetic set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "etad_anet.py"
TINY = ["--num-videos", "8", "--val-fraction", "0.25", "--num-snippets", "16", "--batch-size",
        "2", "--no-progress", "--pretrained", "none"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def run(*args: object, returncode: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=600)  # fmt: skip
    assert proc.returncode == returncode, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sgs_tad.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("etad_reliability") / "data"
    generate_synthetic_dataset(root, num_videos=8, val_fraction=0.25)
    return root


# ------------------------------------------------------------------ item 1: the user's data


def test_a_data_root_holding_the_users_data_is_refused_untouched(tmp_path: Path) -> None:
    mine = tmp_path / "mydata"
    (mine / "videos").mkdir(parents=True)
    (mine / "annotations.json").write_text('{"database": {"abc": {"subset": "training"}}}')
    (mine / "videos" / "v_abc.mp4").write_bytes(b"the user's video")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    proc = run("--data-root", mine, "--output-dir", tmp_path / "out", *TINY, returncode=2)
    line = one_error_line(proc)
    assert str(mine) in line and "annotations.json (not a synthetic set)" in line
    assert f"--annotations {mine / 'annotations.json'}" in line
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before


def test_the_synthetic_set_is_still_reused_in_its_own_folder(data: Path, tmp_path: Path) -> None:
    stamp = (data / "annotations.json").stat().st_mtime_ns
    run("--data-root", data, "--output-dir", tmp_path / "out", "--epochs", "1", *TINY)
    assert (data / "annotations.json").stat().st_mtime_ns == stamp


# --------------------------------------------- items 2 and 10: SIGTERM, then an exact resume


def stop_after_first_step(*args: object) -> subprocess.CompletedProcess[str]:
    out = Path(str(args[args.index("--output-dir") + 1]))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().strip():
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def weights(model: Path) -> dict[str, torch.Tensor]:
    state = torch.load(model, weights_only=True)
    return {f"{part}.{k}": v for part in ("encoder", "detector") for k, v in state[part].items()}


def test_sigterm_ends_as_interrupted_and_the_resume_is_bit_identical(
    data: Path, tmp_path: Path
) -> None:
    common = ["--data-root", data, "--epochs", "2", *TINY]
    run(*common, "--output-dir", tmp_path / "whole")
    out = tmp_path / "stopped"
    proc = stop_after_first_step(*common, "--output-dir", out)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "interrupted (SIGTERM)" in proc.stderr and "--resume" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interrupted"] is True and metrics["stop_signal"] == "SIGTERM"
    assert "average_mAP" not in metrics
    assert not (out / "model.pt").exists() and not (out / "predictions.json").exists()
    assert list((out / "checkpoints").glob("checkpoint-*.pt"))
    run(*common, "--output-dir", out, "--resume")
    assert "interrupted" not in json.loads((out / "metrics.json").read_text())
    whole, resumed = weights(tmp_path / "whole" / "model.pt"), weights(out / "model.pt")
    assert whole.keys() == resumed.keys()
    differ = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert differ == [], differ[:5]


# ------------------------------------------------------------- item 4: one run per folder


def test_a_second_run_in_the_same_output_dir_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from sgs_tad.training.outputs import OutputLock
            with OutputLock(sys.argv[1]):
                print("locked", flush=True)
                time.sleep(120)
        """), str(out)],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        proc = run("--data-root", data, "--output-dir", out, "--epochs", "1", *TINY,
                   returncode=2)  # fmt: skip
        line = one_error_line(proc)
        assert f"--output-dir '{out}' is in use by process {holder.pid}" in line
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------- item 8: predict, model.pt, data


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model.pt as training writes it, without training (predict's checks come first)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from etad.options import parse_args
    from etad.training import build_models

    args = parse_args([*TINY, "--device", "cpu"])
    encoder, detector = build_models(args, None, 4)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save({"encoder": encoder.state_dict(), "detector": detector.state_dict(),
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "classes": ["a", "b", "c", "d"], "in_channels": None}, path)  # fmt: skip
    return path


def test_predict_on_a_file_that_is_not_a_video(untrained_model: Path, tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are notes, not a video\n" * 20)
    proc = run("predict", fake, "--model", untrained_model, returncode=2)
    line = one_error_line(proc)
    assert "notes.mp4 is not a video file that can be read" in line


def test_predict_refuses_a_negative_top(untrained_model: Path, data: Path) -> None:
    video = sorted((data / "videos").iterdir())[0]
    proc = run("predict", video, "--model", untrained_model, "--top", "-1", returncode=2)
    assert "--top must be >= 1" in proc.stderr


@pytest.mark.parametrize(("key", "value"), [("size", 100_000), ("num_snippets", 10**7),
                                            ("snippet_length", "4"), ("layout", "x")])  # fmt: skip
def test_a_tampered_model_is_refused_before_anything_is_built(
    untrained_model: Path, data: Path, tmp_path: Path, key: str, value: object
) -> None:
    state = torch.load(untrained_model, weights_only=True)
    state["args"][key] = value
    tampered = tmp_path / "model.pt"
    torch.save(state, tampered)
    video = sorted((data / "videos").iterdir())[0]
    proc = run("predict", video, "--model", tampered, returncode=2)
    line = one_error_line(proc)
    assert key in line and repr(value) in line and "damaged or was edited" in line


def test_an_empty_training_set_is_one_line(data: Path, tmp_path: Path) -> None:
    ann = json.loads((data / "annotations.json").read_text())
    for video in ann["database"].values():
        video["subset"] = "validation"
    only_val = tmp_path / "annotations.json"
    only_val.write_text(json.dumps(ann))
    proc = run("--annotations", only_val, "--data-root", data / "videos", "--output-dir",
               tmp_path / "out", "--epochs", "1", *TINY, returncode=2)  # fmt: skip
    assert "no videos in the training subset" in one_error_line(proc)
