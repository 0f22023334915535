"""Tests of sgs_tad.data.windows: THUMOS-style sliding windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sgs_tad.data import (
    ActivityNetDataset,
    VideoSample,
    WindowedDataset,
    sliding_windows,
    window_sample,
)
from sgs_tad.engine.sources import TensorSource


def test_sliding_windows_cover_every_snippet():
    assert sliding_windows(100) == [(0, 100)]
    assert sliding_windows(128) == [(0, 128)]
    assert sliding_windows(256) == [(0, 128), (64, 192), (128, 256)]
    assert sliding_windows(300)[-1] == (172, 300)
    for n in (129, 200, 333, 1000):
        wins = sliding_windows(n, window=128, stride=64)
        covered = torch.zeros(n, dtype=torch.bool)
        for a, b in wins:
            assert b - a == 128
            covered[a:b] = True
        assert bool(covered.all())
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, stride=0)


def _sample(n=40, duration=40.0):
    feats = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    return VideoSample(
        source=TensorSource(feats),
        segments=torch.tensor([[2.0, 6.0], [18.0, 24.0], [30.0, 39.0]]) / duration,
        labels=torch.tensor([0, 1, 2]),
        video_id="x",
        duration=duration,
        fps=1.0,
        snippet_times=torch.arange(n, dtype=torch.float32) + 0.5,
        features=feats,
    )


def test_window_sample_clips_and_renormalises_ground_truth():
    s = _sample()
    w = window_sample(s, 16, 32, min_visible=0.5)  # seconds 16..32
    assert w.offset == pytest.approx(16.0) and w.duration == pytest.approx(16.0)
    # [18, 24] fully inside; [30, 39] has 2 of 9 s inside -> dropped
    assert w.labels.tolist() == [1]
    assert torch.allclose(w.segments, torch.tensor([[2.0 / 16, 8.0 / 16]]))
    assert len(w.source) == 16
    assert torch.equal(
        w.source.get_snippets(torch.tensor([0, 15]))[:, 0], torch.tensor([16.0, 31.0])
    )
    assert w.features is not None and w.features.shape == (16, 3)
    assert torch.allclose(w.snippet_times[:2], torch.tensor([0.5, 1.5]))
    loose = window_sample(s, 16, 32, min_visible=0.2)
    assert loose.labels.tolist() == [1, 2]
    assert torch.allclose(loose.segments[1], torch.tensor([14.0 / 16, 1.0]))
    assert s.labels.tolist() == [0, 1, 2]  # the original is untouched


def test_windowed_dataset_over_features(tmp_path):
    db = {
        "database": {
            "long": {
                "subset": "training",
                "duration": 50.0,
                "annotations": [{"segment": [5.0, 10.0], "label": "a"}],
            },
            "short": {
                "subset": "training",
                "duration": 10.0,
                "annotations": [{"segment": [1.0, 2.0], "label": "a"}],
            },
        }
    }
    (tmp_path / "anno.json").write_text(json.dumps(db))
    np.save(tmp_path / "long.npy", np.random.default_rng(0).normal(size=(50, 4)).astype("f4"))
    np.save(tmp_path / "v_short.npy", np.zeros((10, 4), dtype="f4"))
    base = ActivityNetDataset(tmp_path / "anno.json", tmp_path, mode="features", num_snippets=None)
    ds = WindowedDataset(base, window=20, stride=10)
    assert [it[1:] for it in ds.items] == [(0, 20), (10, 30), (20, 40), (30, 50), (0, 10)]
    assert len(ds) == 5 and ds[4].video_id == "short" and len(ds[4].source) == 10
    kept = WindowedDataset(base, window=20, stride=10, drop_empty=True)
    assert [it[1:] for it in kept.items] == [(0, 20), (0, 10)]
    assert kept[0].labels.tolist() == [0]
