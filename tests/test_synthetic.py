"""Tests of sgs_tad.data.synthetic: the generated data set is real, valid and deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

from sgs_tad.data.annotations import load_annotations
from sgs_tad.data.synthetic import (
    SYNTHETIC_CLASSES,
    generate_synthetic_dataset,
    synthetic_video_dir,
)
from sgs_tad.data.video import decode_video_frames, probe_media

SMALL = dict(num_videos=4, size=32, fps=12, min_duration=3.0, max_duration=4.0)


def _frames(ann_path, video_id):
    path = synthetic_video_dir(ann_path) / f"v_{video_id}.mp4"
    n = probe_media(path, "video").num_frames
    return decode_video_frames(path, list(range(n)))


def test_same_seed_gives_identical_json_and_frames(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", seed=3, **SMALL)
    b = generate_synthetic_dataset(tmp_path / "b", seed=3, **SMALL)
    assert a.read_text() == b.read_text()
    for vid in json.loads(a.read_text())["database"]:
        assert np.array_equal(_frames(a, vid), _frames(b, vid))


def test_different_seed_differs(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", seed=0, **SMALL)
    b = generate_synthetic_dataset(tmp_path / "b", seed=1, **SMALL)
    assert json.loads(a.read_text())["database"] != json.loads(b.read_text())["database"]
    assert not np.array_equal(_frames(a, "synth_0000")[:20], _frames(b, "synth_0000")[:20])


def test_cached_unless_the_config_changes(tmp_path):
    path = generate_synthetic_dataset(tmp_path, seed=0, **SMALL)
    video = synthetic_video_dir(path) / "v_synth_0000.mp4"
    stamp = (path.stat().st_mtime_ns, video.stat().st_mtime_ns)
    assert generate_synthetic_dataset(tmp_path, seed=0, **SMALL) == path
    assert (path.stat().st_mtime_ns, video.stat().st_mtime_ns) == stamp
    generate_synthetic_dataset(tmp_path, seed=5, **SMALL)
    assert json.loads(path.read_text())["sgs_tad_synthetic"]["config"]["seed"] == 5
    video.unlink()  # an incomplete set is regenerated
    generate_synthetic_dataset(tmp_path, seed=5, **SMALL)
    assert video.is_file()


def test_annotations_are_valid_and_match_the_videos(tmp_path):
    path = generate_synthetic_dataset(
        tmp_path, num_videos=12, seed=0, size=32, fps=12, min_duration=4.0, max_duration=8.0
    )
    ann = load_annotations(path)
    assert set(ann.classes) == set(SYNTHETIC_CLASSES[:4])
    assert {v.subset for v in ann.videos} == {"training", "validation"}
    assert sum(v.subset == "validation" for v in ann.videos) == 3
    durations = set()
    for v in ann.videos:
        info = probe_media(synthetic_video_dir(path) / f"v_{v.video_id}.mp4", "video")
        assert (info.height, info.width, info.fps) == (32, 32, 12.0)
        assert info.num_frames == round(v.duration * 12)
        assert 1 <= len(v.segments) <= 4
        covered = sum(e - s for s, e in v.segments) / v.duration
        assert 0.04 <= covered <= 0.81, covered
        ends = [0.0]
        for s, e in v.segments:
            assert s >= ends[-1] and e <= v.duration  # sorted, disjoint, inside the video
            ends.append(e)
        assert len(set(v.labels)) == 1  # classes_per_video="one"
        durations.add(v.duration)
    assert len(durations) > 1


def test_actor_moves_during_actions_more_than_outside(tmp_path):
    path = generate_synthetic_dataset(tmp_path, seed=0, **SMALL)
    ann = load_annotations(path)
    for v in ann.videos:
        frames = _frames(path, v.video_id).astype(np.float32)
        motion = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        inside = np.zeros(len(motion), dtype=bool)
        for s, e in v.segments:
            inside[round(s * 12) : round(e * 12) - 1] = True
        if inside.all() or not inside.any():
            continue
        assert motion[inside].mean() > 1.2 * motion[~inside].mean(), v.video_id


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 9}, "num_classes"),
        ({"size": 31}, "even"),
        ({"min_duration": 1.0, "max_duration": 1.0}, ">= 32"),
        ({"codec": "no_such_codec"}, "no usable video encoder"),
    ],
)
def test_bad_config_is_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_synthetic_dataset(tmp_path, **{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "module", ["annotations", "snippets", "dataset", "synthetic", "synthetic.clips", "windows"]
)
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"sgs_tad.data.{module}"))
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------- instances="many" (THUMOS)

TINY_DEFAULT = dict(num_videos=4, min_duration=2.0, max_duration=3.0, size=16, val_fraction=0.25)


def _database_digest(path):
    import hashlib

    database = json.loads(path.read_text())["database"]
    return hashlib.sha256(json.dumps(database, sort_keys=True).encode()).hexdigest()[:16]


def test_default_instances_leave_the_set_and_its_fingerprint_unchanged(tmp_path):
    from sgs_tad.data.synthetic import SyntheticConfig

    # Digests and fingerprints of the code before instances= existed: the default ("few")
    # must give the same annotations and the same fingerprint, so cached sets are reused.
    plain = generate_synthetic_dataset(tmp_path / "plain", **TINY_DEFAULT)
    assert _database_digest(plain) == "4c51f73e74541507"
    meta = json.loads(plain.read_text())["sgs_tad_synthetic"]
    assert meta["fingerprint"] == "2ab9db4cc560433e"
    assert "instances" not in meta["config"]
    few = generate_synthetic_dataset(tmp_path / "few", instances="few", **TINY_DEFAULT)
    assert few.read_text() == plain.read_text()
    # the main job's default set (144 videos, half for validation)
    assert SyntheticConfig(num_videos=144, val_fraction=0.5).fingerprint() == "b17e7f279878ca26"
    assert SyntheticConfig(instances="many").fingerprint() != SyntheticConfig().fingerprint()


def test_many_instances_are_many_short_and_of_mixed_classes(tmp_path):
    fps = 12
    path = generate_synthetic_dataset(
        tmp_path, num_videos=4, size=16, fps=fps, min_duration=24.0, max_duration=30.0,
        classes_per_video="mixed", instances="many", val_fraction=0.0,
    )  # fmt: skip
    meta = json.loads(path.read_text())["sgs_tad_synthetic"]
    assert meta["config"]["instances"] == "many"
    videos = load_annotations(path).videos
    labels_seen = set()
    for video in videos:
        segments = sorted(video.segments)
        assert len(segments) >= 4, (video.video_id, segments)
        for start, end in segments:
            assert 0.75 - 1 / fps <= end - start <= 2.5 + 1 / fps
        gaps = [b[0] - a[1] for a, b in zip(segments, segments[1:])]
        assert min(gaps) >= 4 / fps - 1e-9
        assert sum(e - s for s, e in segments) <= 0.6 * video.duration + 1e-9
        labels_seen |= set(video.labels)
    assert max(len(set(v.labels)) for v in videos) >= 2  # several classes in a video
    assert len(labels_seen) >= 3


def test_many_instance_counts_follow_the_video_length():
    from sgs_tad.data.synthetic import _many_segments

    for seconds, lo, hi in ((12, 2, 5), (32, 6, 13)):
        counts = []
        for i in range(50):
            segments = _many_segments(np.random.default_rng([7, i]), seconds * 16, 16)
            counts.append(len(segments))
            assert segments[0][0] >= 0 and segments[-1][1] <= seconds * 16
        assert lo <= min(counts) and max(counts) <= hi, (seconds, counts)


def test_unknown_instances_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="instances must be 'few'.*got 'lots'"):
        generate_synthetic_dataset(tmp_path, instances="lots", **SMALL)  # type: ignore[arg-type]
