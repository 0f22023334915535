"""The pretraining stage: the trimmed-clip set and examples/pretrain_encoder.py."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import pretrain_encoder  # noqa: E402
from pretrain_encoder import PretrainConfig  # noqa: E402
from sgs_tad.data.synthetic import (  # noqa: E402
    CLIP_CLASSES,
    SYNTHETIC_CLASSES,
    generate_synthetic_clips,
    read_synthetic_clips,
)
from sgs_tad.encoders import build_encoder  # noqa: E402

SMALL = dict(num_clips=14, size=16, num_frames=6)


def test_clips_are_deterministic_and_balanced(tmp_path: Path) -> None:
    a = generate_synthetic_clips(tmp_path / "a", seed=3, **SMALL)
    b = generate_synthetic_clips(tmp_path / "b", seed=3, **SMALL)
    assert a.read_text() == b.read_text()
    fa, la, sa, classes = read_synthetic_clips(a)
    fb, lb, _, _ = read_synthetic_clips(b)
    assert np.array_equal(fa, fb) and np.array_equal(la, lb)
    assert fa.shape == (14, 6, 16, 16, 3) and fa.dtype == np.uint8
    assert classes == list(CLIP_CLASSES)
    assert Counter(la.tolist()) == {c: 2 for c in range(len(CLIP_CLASSES))}
    assert sa.count("validation") == 1  # 10 % of 14, spread over the ids
    c = generate_synthetic_clips(tmp_path / "c", seed=4, **SMALL)
    assert not np.array_equal(read_synthetic_clips(c)[0], fa)


def test_clip_classes_differ_from_detection_classes() -> None:
    assert not set(CLIP_CLASSES) & set(SYNTHETIC_CLASSES)


def test_clip_set_is_cached(tmp_path: Path) -> None:
    path = generate_synthetic_clips(tmp_path, **SMALL)
    stamp = path.stat().st_mtime_ns
    assert generate_synthetic_clips(tmp_path, **SMALL) == path
    assert path.stat().st_mtime_ns == stamp
    generate_synthetic_clips(tmp_path, **{**SMALL, "num_clips": 7})
    assert len(json.loads(path.read_text())["database"]) == 7


@pytest.mark.parametrize(
    ("opts", "match"),
    [({"num_clips": 3}, "num_clips must be >= num_classes"), ({"num_frames": 2}, "num_frames")],
)
def test_clip_config_errors_name_the_value(tmp_path: Path, opts: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_synthetic_clips(tmp_path, **{**SMALL, **opts})


def _config(root: Path, **changes: object) -> PretrainConfig:
    opts: dict = dict(data_root=str(root / "clips"), num_clips=14, size=16, epochs=1,
                      batch_size=8)  # fmt: skip
    opts.update(changes)
    return PretrainConfig(**opts)


def test_pretrain_writes_a_checkpoint_build_encoder_loads(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "enc.pt"
    cfg = _config(tmp_path)
    assert pretrain_encoder.pretrain_encoder(cfg, out) == out
    encoder = build_encoder("small3d", weights=out)
    state = torch.load(out, map_location="cpu", weights_only=True)
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, state["state_dict"][k])
    meta = state["meta"]
    assert meta["fingerprint"] == cfg.fingerprint()
    assert 0.0 <= meta["train_accuracy"] <= 1.0
    assert not list(tmp_path.glob("*.tmp"))


def test_pretrain_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "enc.pt"
    cfg = _config(tmp_path)
    pretrain_encoder.pretrain_encoder(cfg, out)
    stamp = out.stat().st_mtime_ns

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached checkpoint should have been reused")

    monkeypatch.setattr(pretrain_encoder, "read_synthetic_clips", refuse)
    assert pretrain_encoder.pretrain_encoder(cfg, out) == out
    assert out.stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="reused"):  # another recipe trains again
        pretrain_encoder.pretrain_encoder(_config(tmp_path, epochs=2), out)


def test_main_job_pretrained_option(tmp_path: Path) -> None:
    from etad import options

    args = options.parse_args(["--pretrained", "auto"])
    assert options.pretrains(args)
    assert args.weights == pretrain_encoder.default_checkpoint(options.pretrain_config(args))
    assert args.frozen_stages == 1 and args.encoder_delay == 0.0
    assert args.encoder_lr == pytest.approx(args.detector_lr / 100)
    scratch = options.parse_args(["--pretrained", "none"])
    assert (
        scratch.weights is None and scratch.encoder_lr == 2e-4 and not options.pretrains(scratch)
    )
    given = options.parse_args(["--pretrained", "auto", "--weights", str(tmp_path / "w.pt")])
    assert given.weights == tmp_path / "w.pt" and not options.pretrains(given)
    with pytest.raises(SystemExit):
        options.parse_args(["--pretrained", str(tmp_path / "missing.pt")])


def test_main_job_vit_defaults(tmp_path: Path) -> None:
    """ViTs: full fine-tuning, their snippet size, AdaTAD's rate when pretrained."""
    from etad import options

    tiny = options.parse_args(["--encoder", "videomae_tiny"])
    assert options.pretrains(tiny) and tiny.frozen_stages == -1
    assert (tiny.snippet_length, tiny.size) == (4, 32)
    # the synthetic pretraining is weak: a higher rate than AdaTAD's, no hold
    assert tiny.encoder_lr == options.VIT_AUTO_LR == 2e-4 and tiny.encoder_delay == 0.0
    given = options.parse_args(["--encoder", "videomae_b", "--weights", str(tmp_path / "k.pth")])
    assert given.encoder_lr == options.VIT_PRETRAINED_LR == 1e-5 and given.frozen_stages == -1
    scratch = options.parse_args(["--encoder", "videomae_s", "--pretrained", "none"])
    assert (scratch.snippet_length, scratch.size, scratch.frozen_stages) == (8, 48, -1)
    assert scratch.encoder_lr == 2e-4 and scratch.encoder_delay == 1.0
    large = options.parse_args(["--encoder", "videomae_l", "--size", "64"])  # no CPU pretraining
    assert not options.pretrains(large) and large.weights is None and large.size == 64
    assert not options.parse_args(["--encoder", "videomae_b"]).checkpoint_blocks
    assert options.parse_args(["--encoder", "videomae_b", "--checkpoint-blocks"]).checkpoint_blocks


def test_pretrain_refuses_an_encoder_it_cannot_pretrain(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be pretrained here"):
        pretrain_encoder.pretrain_encoder(_config(tmp_path, encoder="videomae_b"))


def test_auto_is_the_default_and_only_for_the_synthetic_set(tmp_path: Path) -> None:
    from etad import options

    assert options.pretrains(options.parse_args([]))
    real = options.parse_args(["--pretrained", "auto", "--annotations", str(tmp_path / "a.json")])
    assert real.weights is None and not options.pretrains(real) and real.encoder_lr == 2e-4


def test_main_job_fine_tunes_a_pretrained_checkpoint(tmp_path: Path) -> None:
    """One tiny epoch from ``--pretrained PATH``: the checkpoint loads, the run evaluates."""
    import os
    import subprocess

    torch.set_num_threads(1)
    ckpt = pretrain_encoder.pretrain_encoder(_config(tmp_path), tmp_path / "enc.pt")
    out = tmp_path / "out"
    cmd = [sys.executable, str(EXAMPLES / "etad_anet.py"), "--pretrained", str(ckpt),
           "--data-root", str(tmp_path / "data"), "--output-dir", str(out), "--epochs", "1",
           "--num-videos", "8", "--val-fraction", "0.25", "--num-snippets", "16",
           "--batch-size", "2", "--no-progress", "--size", "16"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["weights"] == str(ckpt) and settings["frozen_stages"] == 1
    assert settings["encoder_lr"] == pytest.approx(settings["detector_lr"] / 100)
