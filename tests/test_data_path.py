"""The data path that can feed a GPU: uint8 sources, a uint8 decode cache, decoding in workers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("av")
from sgs_tad.data import ActivityNetDataset, collate_samples, generate_synthetic_dataset
from sgs_tad.data import snippets as snippets_module
from sgs_tad.data.snippets import DecodedSource, MediaSnippetSource
from sgs_tad.data.synthetic import synthetic_video_dir
from sgs_tad.encoders import Small3DCNN

OPTS = dict(num_snippets=8, snippet_length=4, size=24)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_synthetic_dataset(
        root, num_videos=3, size=32, fps=12, min_duration=3.0, max_duration=4.0
    )


def test_uint8_source_with_the_encoders_normalisation_equals_the_float_source(synth):
    root = synthetic_video_dir(synth)
    as_float = ActivityNetDataset(synth, root, training=True, **OPTS)[1].source
    as_uint8 = ActivityNetDataset(synth, root, training=True, dtype="uint8", **OPTS)[1].source
    idx = torch.tensor([6, 0, 3])
    pixels, floats = as_uint8.get_snippets(idx), as_float.get_snippets(idx)
    assert pixels.dtype == torch.uint8 and floats.dtype == torch.float32
    assert pixels.shape == floats.shape == (3, 3, 4, 24, 24)
    torch.manual_seed(0)
    enc = Small3DCNN(widths=(8, 16)).eval()
    assert torch.equal(enc.normalise_input(pixels), floats)  # the same function, bit for bit
    with torch.no_grad():
        torch.testing.assert_close(enc(pixels), enc(floats))


def test_decode_cache_holds_uint8(synth):
    source = ActivityNetDataset(synth, synthetic_video_dir(synth), **OPTS)[0].source
    assert isinstance(source, MediaSnippetSource)
    assert source.whole_video_bytes == 8 * 3 * 4 * 24 * 24  # one byte per value, not four
    first = source.get_snippets(torch.tensor([1, 2]))
    assert source._cache is not None and source._cache.dtype == torch.uint8
    plain = ActivityNetDataset(synth, synthetic_video_dir(synth), decode_cache_bytes=0, **OPTS)
    assert torch.equal(first, plain[0].source.get_snippets(torch.tensor([1, 2])))


def test_decode_in_workers_hands_over_uint8_in_shared_memory(synth, monkeypatch):
    root = synthetic_video_dir(synth)
    lazy = ActivityNetDataset(synth, root, dtype="uint8", **OPTS)
    ds = ActivityNetDataset(synth, root, dtype="uint8", decode_in_workers=True, **OPTS)
    loader = DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_samples)
    it = iter(loader)  # the worker is started (forked) here, with the real decoder

    def no_decoding_here(*args, **kwargs):
        raise AssertionError("decoded in the main process")

    monkeypatch.setattr(snippets_module, "decode_video_frames", no_decoding_here)
    batch = next(it)
    monkeypatch.undo()
    for i, source in enumerate(batch.sources):
        assert isinstance(source, DecodedSource)
        assert source.pixels.dtype == torch.uint8 and source.pixels.is_shared()
        idx = torch.tensor([7, 2])
        assert torch.equal(source.get_snippets(idx), lazy[i].source.get_snippets(idx))


def test_an_items_small_tensors_travel_inline_and_its_pixels_in_shared_memory(synth):
    import io
    import pickle
    from multiprocessing.reduction import ForkingPickler  # what DataLoader workers send with

    from sgs_tad.data.dataset import VideoBatch

    root = synthetic_video_dir(synth)
    ds = ActivityNetDataset(synth, root, dtype="uint8", decode_in_workers=True, **OPTS)
    batch = collate_samples([ds[0], ds[1]])
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(batch)
    # torch's reducer moves a tensor to a shared-memory segment of its own as it pickles it:
    # only the pixels take that road, the segments, labels and times go in the pickle
    sample = batch.samples[0]
    assert sample.source.pixels.is_shared()
    assert not any(t.is_shared() for t in (sample.segments, sample.labels, sample.snippet_times))
    assert not batch.durations.is_shared() and not batch.offsets.is_shared()
    back = pickle.loads(buf.getvalue())
    assert isinstance(back, VideoBatch) and back.video_ids == batch.video_ids
    for a, b in zip(back.samples, batch.samples):
        for name in ("segments", "labels", "snippet_times"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and torch.equal(x, y)
        assert torch.equal(a.source.pixels, b.source.pixels)
    # the batch's lists still share the samples' tensors, as collate_samples made them
    assert back.segments[1] is back.samples[1].segments
    assert back.labels[0] is back.samples[0].labels
    assert torch.equal(back.durations, batch.durations) and back.durations.dtype == torch.float64
    # a batch put together by hand (not by collate_samples) keeps every field it was given
    odd = VideoBatch(batch.sources, batch.segments, batch.labels, ["x", "y"], batch.durations,
                     batch.offsets, batch.samples)  # fmt: skip
    assert pickle.loads(pickle.dumps(odd)).video_ids == ["x", "y"]


def test_decode_in_workers_float_output_matches_the_lazy_float_source(synth):
    root = synthetic_video_dir(synth)
    lazy = ActivityNetDataset(synth, root, **OPTS)[2].source
    eager = ActivityNetDataset(synth, root, decode_in_workers=True, **OPTS)[2].source
    assert isinstance(eager, DecodedSource)
    idx = torch.arange(8)
    assert torch.equal(eager.get_snippets(idx), lazy.get_snippets(idx))


def test_a_video_over_the_worker_budget_stays_lazy_with_a_log_line(synth, caplog):
    root = synthetic_video_dir(synth)
    ds = ActivityNetDataset(synth, root, decode_in_workers=True, worker_decode_bytes=1000, **OPTS)
    with caplog.at_level(logging.INFO, logger="sgs_tad.data.dataset"):
        source = ds[0].source
    assert isinstance(source, MediaSnippetSource)
    assert "synth_0000" in caplog.text and "worker_decode_bytes" in caplog.text
    with pytest.raises(ValueError, match="worker_decode_bytes must be an int >= 0"):
        ActivityNetDataset(synth, root, worker_decode_bytes=-1, **OPTS)
    with pytest.raises(ValueError, match="dtype must be 'float32'.*'uint8'.*got 'float16'"):
        ActivityNetDataset(synth, root, dtype="float16", **OPTS)  # type: ignore[arg-type]


def test_windows_decode_only_their_own_snippets_in_workers(synth, monkeypatch):
    from sgs_tad.data import WindowedDataset

    root = synthetic_video_dir(synth)
    opts = dict(num_snippets=None, snippet_length=4, size=24)
    lazy = WindowedDataset(ActivityNetDataset(synth, root, **opts), window=4, stride=4)
    base = ActivityNetDataset(synth, root, decode_in_workers=True, **opts)
    decoded: list[int] = []
    real = MediaSnippetSource.decode_uint8

    def counting(self, indices, **kw):
        decoded.append(int(indices.numel()))
        return real(self, indices, **kw)

    monkeypatch.setattr(MediaSnippetSource, "decode_uint8", counting)
    windows = WindowedDataset(base, window=4, stride=4, drop_empty=True)
    assert decoded == []  # building (drop_empty reads annotations) decodes nothing
    item = windows[1]
    assert isinstance(item.source, DecodedSource) and decoded == [4]
    i = next(j for j, w in enumerate(lazy.items) if w == windows.items[1])
    idx = torch.arange(4)
    assert torch.equal(item.source.get_snippets(idx), lazy[i].source.get_snippets(idx))
