"""Damaged, mismatched and disappearing data (issue 23, items 3, 7, 8): each is named, bounded."""

from __future__ import annotations

import json
import logging
import shutil
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("av")
from sgs_tad.data import ActivityNetDataset, generate_synthetic_dataset, load_annotations
from sgs_tad.data.failures import TooManyBadVideosError
from sgs_tad.data.snippets import CropBox, MediaSnippetSource, snippet_frame_indices
from sgs_tad.data.synthetic import synthetic_video_dir
from sgs_tad.data.video import probe_media
from sgs_tad.engine.sources import SnippetReadError

KW = dict(num_snippets=8, snippet_length=4, size=24)


def _encode(path, frames: np.ndarray, *, fps: int = 12, faststart: bool = False) -> None:
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_synthetic_dataset(
        root, num_videos=4, size=32, fps=12, min_duration=3.0, max_duration=4.0
    )


def _copy(synth, tmp_path):
    root = tmp_path / "videos"
    shutil.copytree(synthetic_video_dir(synth), root)
    return root


# ------------------------------------------------------------------ item 3: bounded memory


def test_high_resolution_decode_holds_a_chunk_not_the_video(tmp_path):
    """The decoder's numpy allocations stay a few frames, not every full-resolution frame."""
    num_frames, h, w = 24, 1080, 1920
    frames = np.zeros((num_frames, h, w, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, :, (t * 64) % w : (t * 64) % w + 64] = 255
    path = tmp_path / "v_big.mp4"
    _encode(path, frames)
    del frames
    source = MediaSnippetSource(
        path,
        snippet_frame_indices(num_frames, 6, 4),
        kind="video",
        crop=CropBox(0, 420, 1080, 1080),
        size=(32, 32),
        cache_bytes=0,
    )
    frame_bytes = h * w * 3
    tracemalloc.start()
    try:
        snippets = source.get_snippets(torch.arange(6))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert snippets.shape == (6, 3, 4, 32, 32)
    # Before: every frame held at full resolution, then stacked (2 x 24 frames, ~300 MB).
    assert peak < 0.25 * num_frames * frame_bytes, f"peak {peak / 2**20:.0f} MB"


# ------------------------------------------------------------------ item 7: damaged data


@pytest.fixture()
def truncated(tmp_path):
    frames = np.zeros((60, 32, 32, 3), dtype=np.uint8)
    for t in range(60):
        frames[t, :, : (t % 32) + 1] = 200
    path = tmp_path / "v_cut.mp4"
    _encode(path, frames, faststart=True)  # header first: it survives the truncation
    import av

    with av.open(str(path)) as container:  # cut between two packets, as a stopped download
        cut = [int(p.pos) for p in container.demux(video=0) if p.pos is not None][30]
    path.write_bytes(path.read_bytes()[:cut])
    assert probe_media(path, "video").num_frames == 60  # the container still claims 60
    return path


def test_a_truncated_video_warns_naming_it(truncated, caplog):
    source = MediaSnippetSource(
        truncated,
        snippet_frame_indices(60, 6, 4),
        kind="video",
        crop=CropBox(0, 0, 32, 32),
        size=(32, 32),
        video_id="cut",
    )
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.video"):
        source.get_snippets(torch.arange(6))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "truncated" in warnings[0].getMessage()
    assert str(truncated) in warnings[0].getMessage()


def test_extract_warns_about_a_truncated_video(truncated, tmp_path, caplog):
    from sgs_tad.encoders import Small3DCNN
    from sgs_tad.extract import SnippetOptions

    options = SnippetOptions(num_snippets=6, snippet_length=4, size=16)
    source = options.source(truncated)  # what extract_features encodes, video by video
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.video"):
        Small3DCNN(widths=(4, 4))(source.get_snippets(torch.arange(6)))
    assert any(
        r.levelno == logging.WARNING and str(truncated) in r.getMessage() for r in caplog.records
    )


def test_annotation_duration_that_disagrees_with_the_video_warns(synth, tmp_path, caplog):
    data = json.loads(synth.read_text())
    real = data["database"]["synth_0001"]["duration"]
    data["database"]["synth_0001"]["duration"] = real * 3
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.dataset"):
        ActivityNetDataset(ann, synthetic_video_dir(synth), **KW)
    text = caplog.text
    assert "synth_0001" in text and f"{real * 3:.2f} s" in text and f"{real:.2f} s" in text
    assert "synth_0000" not in text


@pytest.fixture()
def features(synth, tmp_path):
    ann = load_annotations(synth)
    rng = np.random.default_rng(0)
    for i, v in enumerate(ann.videos):
        np.save(tmp_path / f"v_{v.video_id}.npy", rng.standard_normal((10 + i, 6), np.float32))
    return tmp_path, ann.videos


def test_features_saved_as_c_by_t_are_refused_with_feature_dim(synth, features):
    root, videos = features
    bad = root / f"v_{videos[2].video_id}.npy"
    np.save(bad, np.load(bad).T)  # [6, 12]
    with pytest.raises(
        ValueError, match=r"shape \(6, 12\).*\[C, T\].*np.save\(path, features.T\)"
    ):
        ActivityNetDataset(synth, root, mode="features", feature_dim=6, num_snippets=4)
    # the majority of files tells C when feature_dim is not given
    with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\")):
        ActivityNetDataset(synth, root, mode="features", num_snippets=4)
    ds = ActivityNetDataset(synth, root, mode="features", num_snippets=4, on_error="skip")
    assert len(ds) == len(videos) - 1 and ds.skipped == {"transposed features": 1}


def test_features_all_saved_as_c_by_t_are_refused(synth, features):
    root, videos = features
    for v in videos:
        path = root / f"v_{v.video_id}.npy"
        np.save(path, np.load(path).T)
    with pytest.raises(ValueError, match=r"looks saved as \[C, T\] with C=6"):
        ActivityNetDataset(synth, root, mode="features", num_snippets=4)


def test_labels_with_surrounding_spaces_are_stripped_with_a_warning(tmp_path, caplog):
    data = {
        "database": {
            "a": {"subset": "training", "duration": 10.0,
                  "annotations": [{"segment": [1, 2], "label": "jump "}]},
            "b": {"subset": "training", "duration": 10.0,
                  "annotations": [{"segment": [1, 2], "label": "jump"}]},
        }
    }  # fmt: skip
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.annotations"):
        ann = load_annotations(path)
    assert ann.classes == ("jump",)
    assert [v.label_ids for v in ann.videos] == [(0,), (0,)]
    assert "'jump '" in caplog.text and "stripped" in caplog.text


# ------------------------------------------------------------------ item 8: data that disappears


def test_a_file_removed_mid_run_is_reported_as_missing(synth, tmp_path):
    root = _copy(synth, tmp_path)
    ds = ActivityNetDataset(synth, root, decode_cache_bytes=0, **KW)
    source = ds[1].source
    (root / f"v_{ds.videos[1].video_id}.mp4").unlink()
    with pytest.raises(SnippetReadError, match="is missing") as info:
        source.get_snippets(torch.tensor([0]))
    assert info.value.reason == "missing file"
    assert "corrupt" not in str(info.value)
    assert ds.videos[1].video_id in str(info.value)


def test_failures_are_bounded_and_the_error_names_the_files(synth, tmp_path):
    root = _copy(synth, tmp_path)
    ds = ActivityNetDataset(synth, root, decode_cache_bytes=0, max_bad_videos=1, **KW)
    sources = [ds[i].source for i in range(len(ds))]
    shutil.rmtree(root)  # the disk went away
    with pytest.raises(SnippetReadError, match="missing"):
        sources[0].get_snippets(torch.tensor([0]))  # one is allowed: the trainer skips it
    with pytest.raises(SnippetReadError, match="missing"):
        sources[0].get_snippets(torch.tensor([1]))  # the same video again is not a new one
    with pytest.raises(TooManyBadVideosError, match=r"2 of 4 videos.*max_bad_videos=1") as info:
        sources[1].get_snippets(torch.tensor([0]))
    assert not isinstance(info.value, SnippetReadError)  # no skip policy swallows it
    assert "v_synth_0000.mp4" in str(info.value) and "v_synth_0001.mp4" in str(info.value)
    assert set(r for _, r in info.value.failures.values()) == {"missing file"}


def test_the_default_bound_is_a_fraction_of_the_videos(synth):
    ds = ActivityNetDataset(synth, synthetic_video_dir(synth), **KW)
    assert ds.bad_videos is not None and ds.bad_videos.limit == 1  # ceil(10 % of 4)
    assert ActivityNetDataset(synth, synthetic_video_dir(synth), max_bad_videos=None,
                              **KW).bad_videos is None  # fmt: skip
    with pytest.raises(ValueError, match="fraction of the videos, in \\[0, 1\\]"):
        ActivityNetDataset(synth, synthetic_video_dir(synth), max_bad_videos=1.5, **KW)
