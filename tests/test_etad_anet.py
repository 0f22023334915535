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
# --pretrained none: a smoke run need not pretrain (tests/test_pretrain.py covers that path)
TINY = ["--num-videos", "8", "--val-fraction", "0.25", "--num-snippets", "16", "--batch-size",
        "2", "--no-progress", "--pretrained", "none"]  # fmt: skip


def run(*args: object, returncode: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == returncode, proc.stdout[-2000:] + proc.stderr[-4000:]
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


def test_first_run_shows_the_memory_win(trained: tuple[Path, Path]) -> None:
    _, out = trained
    memory = json.loads((out / "metrics.json").read_text())["encoder_memory"]
    s = memory["saved_bytes_per_snippet"]
    assert s > 0 and memory["micro_batch_size"] == 4 and memory["snippets_per_batch"] == 32
    assert memory["sgs_snippets"] == 4  # K: 2 videos of 16 snippets sample 5 each at γ = 0.3
    assert memory["sgs_saved_bytes"] == 4 * s and memory["naive_saved_bytes"] == 32 * s


def test_memory_budget_chooses_k_with_the_probe(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run("--epochs", "1", "--data-root", tmp_path / "data", "--output-dir", out, *TINY,
               "--memory-budget", "1GB")  # fmt: skip
    memory = json.loads((out / "metrics.json").read_text())["encoder_memory"]
    k, s = memory["micro_batch_size"], memory["saved_bytes_per_snippet"]
    assert memory["memory_budget"] == 10**9 and k > 4
    assert f"micro_batch_size='auto': K = {k}," in proc.stderr  # logged by the engine
    line = [x for x in proc.stdout.splitlines() if x.startswith("encoder activations saved")]
    assert len(line) == 1 and f"K = {k} chosen for --memory-budget" in line[0], proc.stdout
    held = min(k, 10)  # 5 sampled snippets of each of the batch's 2 videos
    assert memory["sgs_snippets"] == held and memory["sgs_saved_bytes"] == held * s
    assert memory["naive_saved_bytes"] == 32 * s
    assert f"({32 / held:.1f}x)" in line[0]


def test_memory_budget_too_small_for_one_snippet_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run("--epochs", "1", "--data-root", tmp_path / "data", "--output-dir",
               tmp_path / "out", *TINY, "--memory-budget", "1KB", returncode=2)  # fmt: skip
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("etad_anet.py: error: memory_budget=") and "one snippet" in error
    assert "Traceback" not in proc.stderr


def test_resume_continues_from_the_checkpoint(trained: tuple[Path, Path]) -> None:
    data, out = trained
    before = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    common = ["--data-root", data, "--output-dir", out, *TINY]
    # Another --epochs reshapes the schedule: refused, naming the setting, unless overridden.
    refused = run("--epochs", "2", "--resume", *common, returncode=2)
    assert (
        "epochs: checkpoint 1, now 2" in refused.stderr and "--resume-override" in refused.stderr
    )
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == before
    proc = run("--epochs", "2", "--resume", "--resume-override", *common)
    steps = sorted(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("*.pt"))
    assert steps[-1] == 2 * steps[0], steps  # one more epoch of the same number of steps
    assert "average" in proc.stdout


def test_predict_one_video(trained: tuple[Path, Path]) -> None:
    data, out = trained
    video = sorted((data / "videos").iterdir())[0]
    proc = run("predict", video, "--model", out / "model.pt", "--top", "3")
    lines = [line for line in proc.stdout.splitlines() if " s - " in line]
    assert 1 <= len(lines) <= 3


def test_evaluate_reproduces_the_training_run_numbers(trained: tuple[Path, Path]) -> None:
    _, out = trained
    run("evaluate", "--model", out / "model.pt", "--output", out / "again.json")
    again = json.loads((out / "again.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("average_mAP", "mAP@0.5", "class_agnostic_mAP", "video_accuracy"):
        assert again[key] == pytest.approx(metrics[key]), key
    proc = run("evaluate", "--model", out / "model.pt", "--subset", "training")
    assert "class-agnostic average mAP" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1; got 0"),
        (["--encoder-delay", "10"], "--encoder-delay must be a number of epochs in [0, --epochs"),
        (["--schedule", "step", "--encoder-delay", "1"], "needs --schedule cosine"),
        (["--layout", "thumos", "--window", "0"], "--window must be >= 1; got 0"),
        (["--window", "16"], "--window 16 is the size of a --layout thumos sliding window"),
        (["--layout", "thumos", "--num-snippets", "16"], "pass --window instead"),
        (["--decode-workers", "-1"], "--decode-workers must be >= 0"),
        (["--max-bad-videos", "2.5"], "--max-bad-videos must be a fraction in [0, 1)"),
        (["--pixels", "int8"], "invalid choice: 'int8'"),
        (["--threads", "0"], "--threads must be 'auto' or a number >= 1; got '0'"),
        (["--checkpoint-blocks"], "--checkpoint-blocks checkpoints the blocks of a ViT"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(
    args: list[str], message: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--data-root", str(tmp_path / "data")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "data").exists()  # nothing generated


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


def test_uint8_pixels_decoded_in_a_worker_train_exactly_as_float32(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--pixels uint8 --decode-workers 1``: the video decoded once in a DataLoader worker,
    handed over as uint8 and normalised by the encoder gives the run of the float32 path."""
    data, _ = trained
    outputs = {}
    for pixels, workers in (("float32", "0"), ("uint8", "1")):
        out = outputs[pixels] = tmp_path / pixels
        run("--epochs", "1", "--data-root", data, "--output-dir", out, "--pixels", pixels,
            "--decode-workers", workers, *TINY)  # fmt: skip
    assert (outputs["uint8"] / "predictions.json").read_text() == (
        outputs["float32"] / "predictions.json"
    ).read_text()


def test_bf16_amp_trains_end_to_end_and_reports_the_run_peak(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--amp bf16`` on the CPU: autocast through SGS and the detector, fp32 evaluation."""
    data, _ = trained
    out = tmp_path / "out"
    proc = run("--epochs", "1", "--data-root", data, "--output-dir", out, "--amp", "bf16", *TINY)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["amp"] == "bf16"
    assert metrics["skipped_steps"] == 0 and metrics["steps"] > 0
    assert 0.0 <= metrics["average_mAP"] <= 1.0
    assert set(metrics["peak_memory"]) == {"rss_mb"}
    assert metrics["peak_memory_mb"] == metrics["peak_memory"]["rss_mb"] > 0
    assert "peak RSS MB" in proc.stdout
    # a checkpoint of this bf16 run does not resume as an fp32 run
    run("--epochs", "2", "--data-root", data, "--output-dir", out, "--resume", *TINY,
        returncode=2)  # fmt: skip


# ------------------------------------------------------------- --layout thumos: sliding windows

# 4 videos of 12-20 s (2 training, 2 validation), windows of 16 snippets of 4 frames (4 s)
THUMOS_TINY = ["--layout", "thumos", "--num-videos", "4", "--val-fraction", "0.5", "--window",
               "16", "--batch-size", "2", "--no-progress", "--pretrained", "none"]  # fmt: skip


@pytest.fixture(scope="module")
def trained_thumos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("etad_thumos")
    data, out = root / "data", root / "out"
    proc = run("--epochs", "1", "--data-root", data, "--output-dir", out, *THUMOS_TINY)
    assert "training windows of 16 snippets from 2 videos" in proc.stderr
    return data, out


def test_thumos_layout_evaluates_windows_merged_in_video_time(
    trained_thumos: tuple[Path, Path],
) -> None:
    data, out = trained_thumos
    meta = json.loads((data / "annotations.json").read_text())
    assert meta["sgs_tad_synthetic"]["config"]["instances"] == "many"
    assert meta["sgs_tad_synthetic"]["config"]["classes_per_video"] == "mixed"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mAP@0.3", "mAP@0.4", "mAP@0.5", "mAP@0.6", "mAP@0.7", "average_mAP"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "mAP@0.75" not in metrics
    assert sorted(metrics["mAP"]) == ["0.3", "0.4", "0.5", "0.6", "0.7"]
    assert metrics["settings"]["layout"] == "thumos" and metrics["settings"]["window"] == 16
    predictions = json.loads((out / "predictions.json").read_text())["results"]
    database = meta["database"]
    assert set(predictions) == {k for k, v in database.items() if v["subset"] == "validation"}
    for video_id, dets in predictions.items():
        ends = [d["segment"][1] for d in dets]
        # merged from every window: detections beyond the first window (4 s), none beyond
        # the video
        assert max(ends) > 4.0 and max(ends) <= database[video_id]["duration"] + 1e-6
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)


def test_thumos_evaluate_and_predict_use_windows_too(trained_thumos: tuple[Path, Path]) -> None:
    data, out = trained_thumos
    run("evaluate", "--model", out / "model.pt", "--output", out / "again.json")
    again = json.loads((out / "again.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("average_mAP", "mAP@0.3", "class_agnostic_mAP", "video_accuracy"):
        assert again[key] == pytest.approx(metrics[key]), key
    video = sorted((data / "videos").iterdir())[0]
    proc = run("predict", video, "--model", out / "model.pt", "--top", "50")
    ends = [float(line.split(" s - ")[1].split()[0]) for line in proc.stdout.splitlines()
            if " s - " in line]  # fmt: skip
    assert ends and max(ends) > 4.0  # in video time, past the first window


def test_thumos_resume_refuses_another_window(trained_thumos: tuple[Path, Path]) -> None:
    data, out = trained_thumos
    args = [a if a != "16" else "8" for a in THUMOS_TINY]
    refused = run("--epochs", "1", "--resume", "--data-root", data, "--output-dir", out, *args,
                  returncode=2)  # fmt: skip
    assert "window: checkpoint 16, now 8" in refused.stderr, refused.stderr


# ------------------------------------------------------------------ the class head, in process


def _detector_module():
    sys.path.insert(0, str(SCRIPT.parent))
    from etad import detector

    return detector


def test_snippet_targets_label_the_snippets_whose_centre_an_instance_covers() -> None:
    import torch

    targets = _detector_module().snippet_class_targets(
        torch.tensor([[0.1, 0.3], [0.5, 0.9]]), torch.tensor([2, 1]), 10, background=4
    )
    # centres 0.05, 0.15, ..., 0.95: 0.15 and 0.25 in the first, 0.55-0.85 in the second
    assert targets.tolist() == [4, 2, 2, 4, 4, 1, 1, 1, 1, 4]
    # a video without instances: all background
    empty = torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)
    assert _detector_module().snippet_class_targets(*empty, 5, background=4).tolist() == [4] * 5


@pytest.mark.parametrize("head", ["snippet", "attention", "mean"])
def test_class_heads_learn_a_toy_set_and_give_video_scores(head: str) -> None:
    import torch

    from etad import ETADConfig

    torch.manual_seed(0)
    etad_anet = _detector_module()
    config = ETADConfig.small(in_channels=8, temporal_scale=16, max_duration=16)
    detector = etad_anet.Detector(config, num_classes=3, class_head=head)
    # the class shows as a bump in channel `label` inside the instance
    segments, labels, feats = [], [], []
    for i in range(12):
        label = i % 3
        seg = torch.tensor([[0.25, 0.75]])
        f = torch.randn(16, 8) * 0.1
        f[4:12, label] += 2.0
        segments.append(seg)
        labels.append(torch.tensor([label]))
        feats.append(f)
    x = torch.stack(feats)
    opt = torch.optim.Adam(detector.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = detector.class_loss(x, segments, labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    probs = detector.class_probs(x)
    assert probs.shape == (12, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(12))
    assert probs.argmax(-1).tolist() == [i % 3 for i in range(12)]
    with pytest.raises(ValueError, match="class_head"):
        etad_anet.Detector(config, num_classes=3, class_head="max")


@pytest.mark.ddp
def test_torchrun_with_two_processes(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 examples/etad_anet.py``: DDP (gloo) training, evaluation."""
    data, out = tmp_path / "data", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(SCRIPT),
           "--epochs", "1", "--data-root", str(data), "--output-dir", str(out), *TINY]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert proc.stdout.count("mAP@0.5") == 1  # rank 0 alone evaluates and prints
    # 6 training videos over 2 ranks with batch 2: 2 steps per epoch, not 3 (single process)
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["checkpoint-000000002.pt"]


def test_videomae_tiny_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    """The ViT end to end: full fine-tuning from scratch, per-block checkpointing under SGS."""
    data, out = tmp_path / "data", tmp_path / "out"
    run("--encoder", "videomae_tiny", "--checkpoint-blocks", "--epochs", "1", "--data-root", data,
        "--output-dir", out, *TINY)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["average_mAP"] <= 1.0
    settings = metrics["settings"]
    assert settings["encoder"] == "videomae_tiny" and settings["checkpoint_blocks"]
    # ViT defaults: every block trains (AdaTAD's fullft), the tiny preset's 4 x 32 px snippets
    assert settings["frozen_stages"] == -1 and settings["encoder_lr"] == 2e-4
    assert (settings["snippet_length"], settings["size"]) == (4, 32)
    assert metrics["grad_stats"]["grad_norm/encoder"] > 0  # gradients reached the encoder
    video = sorted((data / "videos").iterdir())[0]
    proc = run("predict", video, "--model", out / "model.pt", "--top", "2")
    assert 1 <= len([line for line in proc.stdout.splitlines() if " s - " in line]) <= 2
    again = tmp_path / "again.json"
    run("evaluate", "--model", out / "model.pt", "--output", again)
    assert json.loads(again.read_text())["average_mAP"] == pytest.approx(metrics["average_mAP"])
