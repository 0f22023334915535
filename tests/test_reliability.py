"""The main job (examples/etad_anet.py) on bad input: one-line errors, skipped videos, resumes.

Each test runs the job's ``main(argv)`` in process on a tiny synthetic set and checks the exit
code (2, as argparse uses for bad options) and the one-line message, or the outputs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("matplotlib")

from sgs_tad.data import generate_synthetic_dataset, synthetic_video_dir

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "etad_anet.py"
TINY = ["--num-snippets", "16", "--batch-size", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def etad_anet() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))  # the job imports its `etad` package
    spec = importlib.util.spec_from_file_location("etad_anet_reliability", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exits_with_2(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``, expect exit code 2, return the stderr (one error line)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic set: 8 videos (6 training, 2 validation), 4-5 s each."""
    root = tmp_path_factory.mktemp("reliability_data")
    return generate_synthetic_dataset(root, num_videos=8, min_duration=4.0, max_duration=5.0)


def corrupt(path: Path) -> None:
    """Zero the middle of a video file: the header (moov, at the end) stays readable."""
    data = bytearray(path.read_bytes())
    start, stop = len(data) // 4, len(data) * 3 // 5
    data[start:stop] = bytes(stop - start)
    path.write_bytes(bytes(data))


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trained(etad_anet: ModuleType, dataset: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:  # fmt: skip
    """One epoch with a corrupt training video, started with --resume on an empty folder."""
    root = tmp_path_factory.mktemp("reliability_run")
    videos = root / "videos"
    shutil.copytree(synthetic_video_dir(dataset), videos)
    db = json.loads(dataset.read_text())["database"]
    bad_id = sorted(k for k, v in db.items() if v["subset"] == "training")[1]
    corrupt(videos / f"v_{bad_id}.mp4")
    out = root / "out"
    argv = ["--epochs", "1", "--annotations", dataset, "--data-root", videos,
            "--output-dir", out, "--resume", *TINY]  # fmt: skip
    handler = Records()
    logging.getLogger().addHandler(handler)
    try:
        etad_anet.main([str(a) for a in argv])
    finally:
        logging.getLogger().removeHandler(handler)
    yield {"out": out, "argv": argv, "bad_id": bad_id, "videos": videos,
           "warnings": handler.messages}  # fmt: skip


# ---------------------------------------------------------------- item 4, 6 and 8: the run


def test_a_corrupt_video_is_skipped_counted_and_reported(trained: dict[str, Any]) -> None:
    metrics = json.loads((trained["out"] / "metrics.json").read_text())
    bad = metrics["bad_videos"]
    assert [b["video_id"] for b in bad] == [trained["bad_id"]], bad
    assert bad[0]["path"].endswith(f"v_{trained['bad_id']}.mp4")
    assert f"could not decode video '{trained['bad_id']}'" in bad[0]["error"]
    assert metrics["steps"] == 3  # 6 training videos, batches of 2: the bad batch is skipped
    assert 0.0 <= metrics["average_mAP"] <= 1.0  # training finished and was evaluated


def test_metrics_json_records_skipped_steps(trained: dict[str, Any]) -> None:
    metrics = json.loads((trained["out"] / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 0
    records = (trained["out"] / "metrics.jsonl").read_text().splitlines()
    assert all("skipped_steps" in json.loads(line) for line in records if '"loss"' in line)


def test_resume_without_a_checkpoint_says_so(trained: dict[str, Any]) -> None:
    assert any("no checkpoint" in m for m in trained["warnings"]), trained["warnings"]


def test_resume_with_another_seed_is_refused_naming_it(
    etad_anet: ModuleType, trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in (trained["out"] / "checkpoints").glob("*.pt"))
    line = exits_with_2(etad_anet.main, [*trained["argv"], "--seed", "1"], capsys)
    assert "seed: checkpoint 0, now 1" in line and "--resume-override" in line
    assert sorted(p.name for p in (trained["out"] / "checkpoints").glob("*.pt")) == before


# ---------------------------------------------------------------------- item 9: CLI errors


def test_predict_given_a_training_checkpoint(
    etad_anet: ModuleType, trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = sorted((trained["out"] / "checkpoints").glob("checkpoint-*.pt"))[-1]
    video = sorted(trained["videos"].glob("*.mp4"))[0]
    line = exits_with_2(etad_anet.main, ["predict", video, "--model", checkpoint], capsys)
    assert f"--model {checkpoint} is a training checkpoint (step 3), not a model.pt" in line
    assert "model.pt that training writes into --output-dir" in line
    # a file that is no torch file at all
    junk = trained["out"] / "junk.pt"
    junk.write_text("not a model")
    line = exits_with_2(etad_anet.main, ["predict", video, "--model", junk], capsys)
    assert f"--model {junk} cannot be loaded" in line


def test_malformed_annotation_json(
    etad_anet: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "anno.json"
    bad.write_text('{"database": {"a": {"subset": "training" "duration": 3}}}')
    line = exits_with_2(etad_anet.main, ["--annotations", bad, "--data-root", tmp_path, *TINY],
                        capsys)  # fmt: skip
    assert f"annotation file {str(bad)!r} is not valid JSON" in line
    assert "line 1 column 42 (character 41)" in line


@pytest.mark.parametrize("flag", ["--size", "--num-snippets", "--snippet-length"])
def test_zero_sizes_are_refused_before_anything_runs(
    etad_anet: ModuleType, flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    argv = ["--data-root", data, "--no-progress", flag, "0"]
    line = exits_with_2(etad_anet.main, argv, capsys)
    assert f"{flag} must be >= 1; got 0" in line
    assert not data.exists()


@pytest.mark.parametrize("device", ["cuda:99", "cuda", "tpu0"])
def test_a_device_this_machine_lacks(
    etad_anet: ModuleType, device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = tmp_path / "data"
    line = exits_with_2(etad_anet.main, ["--data-root", data, "--device", device], capsys)
    assert f"--device {device}" in line or f"--device {device!r}" in line
    assert "--device cpu" in line or "pass cpu" in line
    assert not data.exists()


def test_nonfinite_input_features_name_the_video(
    etad_anet: ModuleType, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = json.loads(dataset.read_text())["database"]
    training = sorted(k for k, v in db.items() if v["subset"] == "training")
    rng = np.random.default_rng(0)
    for video_id in db:
        feats = rng.standard_normal((20, 8)).astype("float32")
        if video_id == training[-1]:
            feats[7, 2] = np.nan
        np.save(tmp_path / f"v_{video_id}.npy", feats)
    argv = ["--epochs", "1", "--features", tmp_path, "--annotations", dataset,
            "--output-dir", tmp_path / "out", *TINY]  # fmt: skip
    line = exits_with_2(etad_anet.main, argv, capsys)
    assert f"the features of video {training[-1]!r}" in line and "1 non-finite value" in line
    assert f"v_{training[-1]}.npy" in line and "Re-extract" in line


# --------------------------------------------------------- item 1 and 7: the data set as a whole


def test_an_id_that_leaves_the_data_root(
    etad_anet: ModuleType, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = tmp_path / "data" / "videos"
    shutil.copytree(synthetic_video_dir(dataset), videos)
    rec = json.loads(dataset.read_text())
    first = sorted(rec["database"])[0]
    shutil.copy(videos / f"v_{first}.mp4", tmp_path / "data" / "stolen.mp4")
    rec["database"]["../stolen"] = rec["database"].pop(first)
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps(rec))
    argv = ["--annotations", anno, "--data-root", videos, "--output-dir", tmp_path / "out",
            *TINY]  # fmt: skip
    line = exits_with_2(etad_anet.main, argv, capsys)
    assert "video id '../stolen' resolves to" in line
    assert f"outside the data root {str(videos)!r}" in line
    assert not (tmp_path / "out").exists()


def test_a_data_set_without_validation_videos(
    etad_anet: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = generate_synthetic_dataset(tmp_path / "data", num_videos=2, min_duration=2.0,
                                     max_duration=2.0, val_fraction=0.0)  # fmt: skip
    argv = ["--annotations", ann, "--data-root", synthetic_video_dir(ann),
            "--output-dir", tmp_path / "out", *TINY]  # fmt: skip
    line = exits_with_2(etad_anet.main, argv, capsys)
    assert f"{ann} has no videos in the validation subset" in line
    assert not (tmp_path / "out").exists()


def test_a_run_that_stops_learning_ends_in_one_line(
    etad_anet: ModuleType, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An update that overflows the weights: steps are skipped, and the run ends in one line
    (at the limit of skipped steps in a row, or at the evaluation), not with a traceback."""
    argv = ["--epochs", "1", "--annotations", dataset,
            "--data-root", synthetic_video_dir(dataset), "--output-dir", tmp_path / "out",
            "--detector-lr", "1e38", *TINY]  # fmt: skip
    line = exits_with_2(etad_anet.main, argv, capsys)
    assert "stopped" in line and "non-finite" in line
