"""Tests of sgs_tad.extract: per-video .npy features the main job's --features mode trains on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from sgs_tad.data import ActivityNetDataset, generate_synthetic_dataset, synthetic_video_dir
from sgs_tad.encoders import build_encoder
from sgs_tad.extract import (
    SnippetOptions,
    extract_features,
    load_checkpoint_encoder,
    main,
    videos_from_annotations,
    videos_in_folder,
)

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ROOT / "examples" / "etad_anet.py"
T = 16  # snippets per video, as the main job's tiny test configuration


def run(*args: object, returncode: int = 0, module: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sgs_tad.extract"] if module else [sys.executable, str(MAIN_JOB)]
    proc = subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == returncode, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short synthetic videos (training and validation), 32 px at 12 fps."""
    root = tmp_path_factory.mktemp("extract_data")
    return generate_synthetic_dataset(
        root, num_videos=6, size=32, fps=12, min_duration=3.0, max_duration=4.0
    )


def small_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("small3d", widths=(8, 16, 32))


def test_one_float32_tc_file_per_video_read_by_the_main_jobs_loader(
    dataset: Path, tmp_path: Path
) -> None:
    videos = videos_from_annotations(dataset, synthetic_video_dir(dataset))
    assert sorted(videos) == [f"synth_{i:04d}" for i in range(6)]
    encoder = small_encoder().train()
    opts = SnippetOptions(num_snippets=T)
    summary = extract_features(encoder, videos, tmp_path, snippets=opts, progress=False)
    assert (summary["total"], summary["written"], summary["skipped"], summary["failed"]) == (
        6,
        6,
        0,
        0,
    )
    assert summary["channels"] == 32 and summary["failures"] == {}
    assert encoder.training  # mode restored after the eval-mode extraction
    for video_id in videos:
        array = np.load(tmp_path / f"{video_id}.npy")
        assert array.shape == (T, 32) and array.dtype == np.float32
    # The features are the encoder's, in eval mode, on the centre-cropped snippets.
    source = opts.source(videos["synth_0002"])
    with torch.no_grad():
        expected = encoder.eval()(source.get_snippets(torch.arange(T)))
    np.testing.assert_allclose(np.load(tmp_path / "synth_0002.npy"), expected, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))
    # The main job's features mode reads them: ActivityNetDataset(mode="features").
    ds = ActivityNetDataset(dataset, tmp_path, mode="features", num_snippets=T)
    assert len(ds) == 6 and ds[0].features.shape == (T, 32)


def test_a_second_run_skips_every_existing_file(dataset: Path, tmp_path: Path) -> None:
    videos = videos_from_annotations(dataset, synthetic_video_dir(dataset), subset="validation")
    opts = SnippetOptions(num_snippets=T)
    first = extract_features(small_encoder(), videos, tmp_path, snippets=opts, progress=False)
    assert first["written"] == len(videos) > 0
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npy")}
    again = extract_features(small_encoder(), videos, tmp_path, snippets=opts, progress=False)
    assert (again["written"], again["skipped"], again["failed"]) == (0, len(videos), 0)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npy")} == stamps
    forced = extract_features(
        small_encoder(), videos, tmp_path, snippets=opts, progress=False, overwrite=True
    )
    assert forced["written"] == len(videos)


def test_a_corrupt_video_is_reported_and_counted_while_the_others_succeed(
    dataset: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("v_synth_0000.mp4", "v_synth_0001.mp4"):
        shutil.copy(synthetic_video_dir(dataset) / name, folder / name)
    (folder / "broken.mp4").write_bytes(os.urandom(4096))
    (folder / "notes.txt").write_text("not a video")
    assert sorted(videos_in_folder(folder)) == ["broken", "v_synth_0000", "v_synth_0001"]
    out = tmp_path / "features"
    # Fixed weights: a resume is refused when the encoder changed (a random one each run).
    weights = tmp_path / "small3d.pt"
    torch.save(build_encoder("small3d").state_dict(), weights)
    common = ["--encoder", "small3d", "--weights", weights, "--videos", folder, "--output", out,
              "--no-progress"]  # fmt: skip
    proc = run(*common, "--num-snippets", T, "--device", "cpu", returncode=1)
    assert "2 written, 0 skipped (already there), 1 failed of 3 videos" in proc.stdout
    assert "broken.mp4" in proc.stderr and "failed: broken:" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "extract_manifest.json",
        "v_synth_0000.npy",
        "v_synth_0001.npy",
    ]
    assert np.load(out / "v_synth_0000.npy").shape == (T, 128)
    # Resuming retries only the failed video, which fails again.
    proc = run(*common, "--num-snippets", T, "--device", "cpu", returncode=1)
    assert "0 written, 2 skipped (already there), 1 failed of 3 videos" in proc.stdout


def test_the_main_job_trains_from_extracted_features(dataset: Path, tmp_path: Path) -> None:
    feats, out = tmp_path / "features", tmp_path / "out"
    proc = run("--encoder", "small3d", "--annotations", dataset, "--data-root",
               synthetic_video_dir(dataset), "--output", feats, "--num-snippets", T,
               "--device", "cpu", "--no-progress")  # fmt: skip
    assert "6 written" in proc.stdout and "[T, 128]" in proc.stdout
    run("--features", feats, "--annotations", dataset, "--epochs", "1", "--num-snippets", T,
        "--batch-size", "2", "--no-progress", "--device", "cpu", "--output-dir", out,
        module=False)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["average_mAP"] <= 1.0
    assert metrics["settings"]["features"] == str(feats)


@pytest.mark.slow
def test_checkpoint_of_the_main_job_extracts_with_its_trained_encoder(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained, feats = tmp_path / "trained", tmp_path / "features"
    videos_dir = synthetic_video_dir(dataset)
    run("--annotations", dataset, "--data-root", videos_dir, "--epochs", "1", "--num-snippets",
        T, "--batch-size", "2", "--no-progress", "--device", "cpu", "--output-dir", trained,
        module=False)  # fmt: skip
    model = trained / "model.pt"
    # The snippet options default to the run's (T = 16 here, not the CLI's 32).
    run("--checkpoint", model, "--annotations", dataset, "--data-root", videos_dir,
        "--output", feats, "--prefix", "v_", "--device", "cpu", "--no-progress")  # fmt: skip
    assert sorted(p.name for p in feats.iterdir()) == [
        "extract_manifest.json",
        *(f"v_synth_{i:04d}.npy" for i in range(6)),
    ]
    # Same features as the main job's own loader gives with its encoder.
    monkeypatch.syspath_prepend(str(MAIN_JOB.parent))
    from etad.prediction import load_model

    _, encoder, _, _ = load_model(model, "cpu")
    ours, _ = load_checkpoint_encoder(model)
    source = SnippetOptions(num_snippets=T).source(videos_dir / "v_synth_0003.mp4")
    with torch.no_grad():
        x = source.get_snippets(torch.arange(T))
        expected = encoder.eval()(x).numpy()
        np.testing.assert_allclose(ours(x).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(np.load(feats / "v_synth_0003.npy"), expected, atol=1e-5)


def test_a_features_mode_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"encoder": {}, "detector": {}, "args": {"encoder": "small3d"},
                "classes": ["a"], "in_channels": 24}, path)  # fmt: skip
    with pytest.raises(ValueError, match="trained on pre-extracted features"):
        load_checkpoint_encoder(path)


def test_a_missing_annotated_video_counts_as_failed(dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    shutil.copy(synthetic_video_dir(dataset) / "v_synth_0004.mp4", root)
    videos = videos_from_annotations(dataset, root, subset="training")
    summary = extract_features(
        small_encoder(), videos, tmp_path / "f", snippets=SnippetOptions(T), progress=False
    )
    assert summary["written"] == 1 and summary["failed"] == len(videos) - 1
    assert "no video file or frame folder" in summary["failures"]["synth_0000"]


SMALL3D_ON_TMP = ["--encoder", "small3d", "--videos", "{tmp}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --encoder NAME"),
        (["--encoder", "small3d", "--checkpoint", "{tmp}/m.pt"], "give exactly one of --encoder"),
        (["--checkpoint", "{tmp}/nope.pt", "--videos", "{tmp}"], "--checkpoint {tmp}/nope.pt: no"),
        (["--encoder", "small3d"], "give exactly one input"),
        (["--encoder", "small3d", "--annotations", "{ann}"], "--annotations needs --data-root"),
        (SMALL3D_ON_TMP, "holds no videos"),
        ([*SMALL3D_ON_TMP, "--num-snippets", "0"], "--num-snippets must be >= 1; got 0"),
        (
            [*SMALL3D_ON_TMP, "--snippet-stride", "4", "--num-snippets", "8"],
            "exclude each other",
        ),
        (["--encoder", "small3d", "--weights", "{tmp}/w.pt", "--videos", "{tmp}"], "cannot load"),
        (["--weights", "{tmp}/w.pt", "--videos", "{tmp}"], "--weights needs --encoder"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_value(
    args: list[str], message: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "m.pt")
    fill = {"tmp": str(tmp_path), "ann": str(dataset)}
    argv = [a.format(**fill) for a in args] + ["--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message.format(**fill) in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------- issue 23 item 9: extract knows what it made


def tensor_videos(n: int = 3, length: int = 5) -> dict:
    from sgs_tad.engine.sources import TensorSource

    g = torch.Generator().manual_seed(0)
    return {f"v{i}": TensorSource(torch.randn(length, 6, generator=g)) for i in range(n)}


def linear_encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4))


def test_a_rerun_with_other_settings_is_refused_or_redone_with_overwrite(tmp_path: Path) -> None:
    videos = tensor_videos()
    first = extract_features(linear_encoder(0), videos, tmp_path, progress=False)
    assert first["written"] == 3
    manifest = json.loads((tmp_path / "extract_manifest.json").read_text())
    assert manifest["files"]["v0.npy"]["shape"] == [5, 4]
    with pytest.raises(ValueError, match="other settings.*encoder_digest.*--overwrite"):
        extract_features(linear_encoder(1), videos, tmp_path, progress=False)
    with pytest.raises(ValueError, match="num_snippets: 32 there, 16 now"):
        extract_features(linear_encoder(0), videos, tmp_path, progress=False,
                         snippets=SnippetOptions(num_snippets=16))  # fmt: skip
    redone = extract_features(linear_encoder(1), videos, tmp_path, progress=False, overwrite=True)
    assert redone["written"] == 3
    again = extract_features(linear_encoder(1), videos, tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (0, 3)


def test_empty_and_truncated_files_are_not_counted_as_done(tmp_path: Path) -> None:
    videos = tensor_videos()
    extract_features(linear_encoder(), videos, tmp_path, progress=False)
    (tmp_path / "v0.npy").write_bytes(b"")
    whole = (tmp_path / "v1.npy").read_bytes()
    (tmp_path / "v1.npy").write_bytes(whole[:-7])
    again = extract_features(linear_encoder(), videos, tmp_path, progress=False)
    assert (again["written"], again["skipped"]) == (2, 1)
    assert np.load(tmp_path / "v1.npy").shape == (5, 4)


def test_files_without_a_manifest_of_another_length_are_refused(tmp_path: Path) -> None:
    """The issue's case: --num-snippets 16 over files made with 128 reported "24 skipped"."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "b"):
        (videos / f"{name}.mp4").write_bytes(b"never decoded")
        np.save(tmp_path / f"{name}.npy", np.zeros((128, 128), np.float32))
    with pytest.raises(SystemExit) as exit_info:
        main(["--encoder", "small3d", "--videos", str(videos), "--output", str(tmp_path),
              "--num-snippets", "16", "--no-progress"])  # fmt: skip
    assert exit_info.value.code == 2


def test_option_errors_and_an_unwritable_output_are_found_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"never decoded")
    (tmp_path / "file").write_text("")
    for extra, message in (
        (["--prefix", "x/y", "--output", str(tmp_path / "out")], "--prefix 'x/y'"),
        (["--output", str(tmp_path / "file" / "sub")], "is a file, so the folder cannot"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["--encoder", "small3d", "--videos", str(videos), "--no-progress", *extra])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_a_planted_link_at_a_predictable_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    # The names the old code used (.<file>.<pid>.tmp) and similar ones.
    for name in (f".v0.npy.{os.getpid()}.tmp", ".v0.npy.tmp"):
        (out / name).symlink_to(victim)
    extract_features(linear_encoder(), tensor_videos(1), out, progress=False)
    assert victim.read_text() == "keep me"
    assert np.load(out / "v0.npy").shape == (5, 4)
