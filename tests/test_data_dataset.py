"""Tests of sgs_tad.data.dataset: items, augmentation, errors, and no annotation mutation."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from sgs_tad.data import (
    ActivityNetDataset,
    collate_samples,
    generate_synthetic_dataset,
    load_annotations,
    synthetic_video_dir,
)
from sgs_tad.data.synthetic import _encode
from sgs_tad.engine.sources import SnippetSource

KW = dict(num_snippets=8, snippet_length=4, size=24)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_synthetic_dataset(
        root, num_videos=4, size=32, fps=12, min_duration=3.0, max_duration=4.0
    )


def test_item_fields_and_shapes(synth):
    ds = ActivityNetDataset(synth, synthetic_video_dir(synth), subset="training", **KW)
    ann = load_annotations(synth, subset="training")
    assert len(ds) == len(ann) == 3
    sample = ds[1]
    video = ann.videos[1]
    assert isinstance(sample.source, SnippetSource) and len(sample.source) == 8
    assert sample.source.get_snippets(torch.tensor([0, 7])).shape == (2, 3, 4, 24, 24)
    assert sample.video_id == video.video_id and sample.fps == 12.0
    expected = torch.tensor(video.segments, dtype=torch.float32) / video.duration
    assert torch.allclose(sample.segments, expected)
    assert sample.labels.tolist() == list(video.label_ids)
    assert sample.snippet_times.shape == (8,)
    assert 0 < float(sample.snippet_times[0]) < float(sample.snippet_times[-1]) < video.duration
    batch = collate_samples([ds[0], ds[1]])
    assert batch.video_ids == [ds[0].video_id, sample.video_id]
    assert batch.durations.shape == (2,)


def test_getitem_never_mutates_annotations(synth):
    ds = ActivityNetDataset(synth, synthetic_video_dir(synth), training=True, **KW)
    before = repr(ds.videos)
    first = ds[0]
    first.segments.mul_(0.0)  # callers may edit what they get...
    first.labels.fill_(-1)
    for i in range(len(ds)):
        ds[i]
    assert repr(ds.videos) == before  # ...without touching the cached annotations
    again = ds[0]
    assert float(again.segments.max()) > 0 and int(again.labels.min()) >= 0


def test_training_crop_is_fixed_per_video_and_epoch(synth):
    kw = {**KW, "training": True, "crop_scale": (0.5, 0.9), "seed": 7}
    ds = ActivityNetDataset(synth, synthetic_video_dir(synth), **kw)
    a, b = ds[0].source, ds[0].source
    assert a.crop == b.crop
    idx = torch.tensor([2, 5])
    assert torch.equal(a.get_snippets(idx), b.get_snippets(idx))
    assert torch.equal(a.get_snippets(idx), a.get_snippets(idx))
    crops = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        crops.add(ds[0].source.crop)
    assert len(crops) > 1
    test_ds = ActivityNetDataset(synth, synthetic_video_dir(synth), **KW)
    assert test_ds[0].source.crop.height == 32  # centre crop of the whole frame


def test_features_mode_resamples_to_t(synth, tmp_path):
    ann = load_annotations(synth)
    for k, v in enumerate(ann.videos):
        feats = np.arange(20 * 6, dtype=np.float32).reshape(20, 6) + k
        name = f"v_{v.video_id}.npy" if k % 2 else f"{v.video_id}.npy"
        np.save(tmp_path / name, feats)
    ds = ActivityNetDataset(synth, tmp_path, mode="features", num_snippets=10)
    s = ds[0]
    assert s.features is not None and s.features.shape == (10, 6)
    assert torch.equal(s.source.get_snippets(torch.tensor([3])), s.features[3:4])
    assert float(s.features[0, 0]) < float(s.features[-1, 0])
    native = ActivityNetDataset(synth, tmp_path, mode="features", num_snippets=None)[1]
    assert native.features is not None
    assert torch.equal(native.features, torch.from_numpy(np.load(tmp_path / "v_synth_0001.npy")))
    same = ActivityNetDataset(synth, tmp_path, mode="features", num_snippets=20)[1]
    assert torch.equal(same.features, native.features)


@pytest.fixture()
def broken(synth, tmp_path):
    """A copy of the set where video 0 is missing, video 1 has 2 frames, video 2 a new label."""
    root = tmp_path / "videos"
    shutil.copytree(synthetic_video_dir(synth), root)
    data = json.loads(synth.read_text())
    classes = load_annotations(synth).classes

    def make(*, missing=False, short=False, label=False):
        shutil.copy(synthetic_video_dir(synth) / "v_synth_0000.mp4", root)
        shutil.copy(synthetic_video_dir(synth) / "v_synth_0001.mp4", root)
        if missing:
            (root / "v_synth_0000.mp4").unlink()
        if short:
            frames = np.zeros((2, 32, 32, 3), dtype=np.uint8)
            _encode(root / "v_synth_0001.mp4", frames, fps=12, codec="libx264")
        rec = json.loads(json.dumps(data))
        if label:
            rec["database"]["synth_0002"]["annotations"][0]["label"] = "dance"
        anno = tmp_path / "anno.json"
        anno.write_text(json.dumps(rec))
        return anno, root

    return make, classes


def test_each_problem_raises_a_clear_error(broken):
    make, classes = broken
    with pytest.raises(FileNotFoundError, match=r"synth_0000.*on_error='skip'"):
        ActivityNetDataset(*make(missing=True), classes=classes, **KW)
    with pytest.raises(ValueError, match=r"2 frames, shorter than one snippet"):
        ActivityNetDataset(*make(short=True), classes=classes, **KW)
    with pytest.raises(ValueError, match=r"'dance', which is not in the class list"):
        ActivityNetDataset(*make(label=True), classes=classes, **KW)
    assert len(ActivityNetDataset(*make(), classes=classes, **KW)) == 4


def test_problems_are_skipped_and_counted(broken, caplog):
    make, classes = broken
    with caplog.at_level(logging.WARNING):
        ds = ActivityNetDataset(
            *make(missing=True, short=True, label=True), classes=classes, on_error="skip", **KW
        )
    assert [v.video_id for v in ds.videos] == ["synth_0003"]
    assert ds.skipped == {"bad annotation": 1, "missing file": 1, "shorter than one snippet": 1}
    assert "skipped 3 of 4 videos" in caplog.text


def test_unreadable_video_is_an_error_or_skipped(broken):
    make, classes = broken
    anno, root = make()
    (root / "v_synth_0003.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError):
        ActivityNetDataset(anno, root, classes=classes, **KW)
    ds = ActivityNetDataset(anno, root, classes=classes, on_error="skip", **KW)
    assert len(ds) == 3 and ds.skipped == {"unreadable": 1}


def test_bad_options(synth):
    with pytest.raises(ValueError, match="mode"):
        ActivityNetDataset(synth, synthetic_video_dir(synth), mode="audio")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ActivityNetDataset(synth, synthetic_video_dir(synth) / "nope")


# ------------------------------------------------------------------ path safety, bad input


@pytest.fixture()
def escaping(synth, tmp_path):
    """A root with the set's videos and, next to it (outside), one more valid video."""
    root = tmp_path / "root" / "videos"
    shutil.copytree(synthetic_video_dir(synth), root)
    outside = tmp_path / "root" / "outside.mp4"
    shutil.copy(synthetic_video_dir(synth) / "v_synth_0000.mp4", outside)
    data = json.loads(synth.read_text())

    def annotations_with(video_id: str):
        rec = json.loads(json.dumps(data))
        rec["database"][video_id] = rec["database"].pop("synth_0003")
        anno = tmp_path / "anno.json"
        anno.write_text(json.dumps(rec))
        return anno

    return annotations_with, root, outside


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_ids_that_leave_the_root_are_refused(escaping, kind):
    annotations_with, root, outside = escaping
    if kind == "dotdot":
        video_id = "../outside"
    elif kind == "absolute":
        video_id = str(outside.with_suffix(""))
    else:
        video_id = "linked"
        (root / "v_linked.mp4").symlink_to(outside)
    anno = annotations_with(video_id)
    with pytest.raises(ValueError, match="outside the data root") as info:
        ActivityNetDataset(anno, root, **KW)
    assert repr(video_id) in str(info.value) and repr(str(root)) in str(info.value)
    ds = ActivityNetDataset(anno, root, on_error="skip", **KW)
    assert video_id not in [v.video_id for v in ds.videos] and len(ds) == 3
    assert ds.skipped == {"outside the data root": 1}


def test_ids_inside_the_root_still_work_through_a_symlinked_root(escaping, tmp_path):
    annotations_with, root, _ = escaping
    (root / "sub").mkdir()
    shutil.copy(root / "v_synth_0003.mp4", root / "sub" / "v_x.mp4")
    link = tmp_path / "link_to_root"
    link.symlink_to(root)
    ds = ActivityNetDataset(annotations_with("sub/v_x"), link, **KW)
    assert "sub/v_x" in [v.video_id for v in ds.videos]


def test_a_corrupt_video_raises_snippet_read_error_naming_id_and_file(synth, tmp_path):
    from sgs_tad.engine.sources import SnippetReadError

    root = tmp_path / "videos"
    shutil.copytree(synthetic_video_dir(synth), root)
    path = root / "v_synth_0001.mp4"
    data = bytearray(path.read_bytes())
    data[len(data) // 4 : len(data) * 3 // 5] = bytes(len(data) * 3 // 5 - len(data) // 4)
    path.write_bytes(bytes(data))  # the header (moov at the end) is intact: probing works
    ds = ActivityNetDataset(synth, root, **KW)
    sample = next(ds[i] for i in range(len(ds)) if ds[i].video_id == "synth_0001")
    with pytest.raises(SnippetReadError, match=r"could not decode video 'synth_0001'") as info:
        sample.source.get_snippets(torch.arange(8))
    assert info.value.video_id == "synth_0001" and info.value.path == path
    assert str(path) in str(info.value)


def test_nonfinite_features_name_the_video(synth, tmp_path):
    from sgs_tad.engine.sources import NonFiniteSnippetsError

    ann = load_annotations(synth)
    for v in ann.videos:
        feats = np.ones((12, 4), dtype=np.float32)
        if v.video_id == "synth_0002":
            feats[5, 3] = np.nan
        np.save(tmp_path / f"v_{v.video_id}.npy", feats)
    ds = ActivityNetDataset(synth, tmp_path, mode="features", num_snippets=6)
    ds[0]
    with pytest.raises(NonFiniteSnippetsError, match=r"video 'synth_0002'.* 1 non-finite") as info:
        ds[2]
    assert "v_synth_0002.npy" in str(info.value) and "(5, 3)" in str(info.value)
    assert info.value.video_id == "synth_0002"


def test_zero_std_is_refused(synth):
    with pytest.raises(ValueError, match=r"std finite and > 0 .* std=\[0.5, 0.0, 0.5\]"):
        ActivityNetDataset(synth, synthetic_video_dir(synth), std=(0.5, 0.0, 0.5), **KW)


@pytest.fixture
def decode_calls(monkeypatch) -> list[int]:
    """The frame counts of every decoding call (``decode_video_frames``), in order."""
    from sgs_tad.data import snippets as snippets_module

    calls: list[int] = []
    real = snippets_module.decode_video_frames

    def counting(path, frames, **kw):
        calls.append(len(frames))
        return real(path, frames, **kw)

    monkeypatch.setattr(snippets_module, "decode_video_frames", counting)
    return calls


def test_a_whole_video_request_fills_the_cache_for_the_next_one(synth, decode_calls):
    """A phase-1 call of all N snippets, then phase 3's sample: one decoding pass, not two."""
    opts = dict(subset="training", num_snippets=8, snippet_length=2, size=16)
    source = ActivityNetDataset(synth, synthetic_video_dir(synth), **opts)[0].source
    calls = decode_calls
    whole = source.get_snippets(torch.arange(8))
    sample = source.get_snippets(torch.tensor([6, 2]))
    assert calls == [8 * 2]
    assert torch.equal(sample, whole[torch.tensor([6, 2])])


def test_media_source_decodes_a_cached_video_once(synth, decode_calls):
    """A video whose snippets fit the cache is decoded in one pass, then served from memory."""
    import pickle

    opts = dict(subset="training", num_snippets=8, snippet_length=2, size=16)
    root = synthetic_video_dir(synth)
    cached = ActivityNetDataset(synth, root, **opts)[0].source
    plain = ActivityNetDataset(synth, root, decode_cache_bytes=0, **opts)[0].source
    calls = decode_calls
    first = cached.get_snippets(torch.tensor([5, 1]))
    again = cached.get_snippets(torch.tensor([0, 7, 3]))
    assert calls == [8 * 2]  # one pass over all 8 snippets, none for the second request
    assert torch.equal(first, plain.get_snippets(torch.tensor([5, 1])))
    assert torch.equal(again, plain.get_snippets(torch.tensor([0, 7, 3])))
    assert len(calls) == 3  # without a cache every request decodes
    assert pickle.loads(pickle.dumps(cached))._cache is None
    with pytest.raises(ValueError, match="decode_cache_bytes must be an int >= 0"):
        ActivityNetDataset(synth, root, subset="training", decode_cache_bytes=-1)
