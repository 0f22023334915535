"""Tests of sgs_tad.data.video and snippets: decoding, frame folders, features, the pipeline."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("av")
from sgs_tad.data.snippets import (
    CropBox,
    MediaSnippetSource,
    SliceSource,
    draw_crop,
    snippet_frame_indices,
)
from sgs_tad.data.synthetic import _encode
from sgs_tad.data.video import decode_video_frames, find_media, load_features, probe_media

Image = pytest.importorskip("PIL.Image")


def _moving_square(num_frames: int, size: int = 32) -> np.ndarray:
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, 8:16, t % (size - 8) : t % (size - 8) + 8] = 255
        frames[t, 0, 0] = t  # a tag: the frame index survives lossy coding roughly
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    path = root / "v_clip.mp4"
    _encode(path, _moving_square(100), fps=10, codec="libx264")
    return path


def test_probe_and_find(video):
    info = probe_media(video, "video")
    assert (info.num_frames, info.fps, info.height, info.width) == (100, 10.0, 32, 32)
    assert find_media(video.parent, "clip", "video") == video
    assert find_media(video.parent, "v_clip", "video") == video
    assert find_media(video.parent, "other", "video") is None


def test_seeking_gives_the_frames_of_a_sequential_decode(video):
    everything = decode_video_frames(video, list(range(100)))
    assert everything.shape == (100, 32, 32, 3)
    wanted = [97, 40, 41, 40, 63, 99, 36]
    seek = decode_video_frames(video, wanted)
    no_seek = decode_video_frames(video, wanted, allow_seek=False)
    assert np.array_equal(seek, everything[wanted])
    assert np.array_equal(no_seek, everything[wanted])
    # frames differ from each other, so an off-by-one would be caught
    assert not np.array_equal(everything[40], everything[41])


def test_snippet_frame_indices_regimes():
    idx = snippet_frame_indices(100, 10, 4)
    assert idx.shape == (10, 4)
    assert torch.equal(idx[:, 1:] - idx[:, :-1], torch.ones(10, 3, dtype=torch.long))
    centres = idx.float().mean(1) + 0.5
    assert torch.allclose(centres, (torch.arange(10) + 0.5) * 10, atol=1.0)
    over = snippet_frame_indices(10, 16, 4, frame_stride=2)  # more snippets than fit: overlap
    assert over.shape == (16, 4) and int(over.max()) <= 9 and int(over.min()) >= 0
    fixed = snippet_frame_indices(100, None, 8)
    assert fixed.shape == (12, 8) and int(fixed[1, 0]) == 8
    assert snippet_frame_indices(100, None, 8, snippet_stride=4).shape == (24, 8)
    with pytest.raises(ValueError, match="shorter than one snippet"):
        snippet_frame_indices(5, 4, 8)


def test_crop_is_drawn_from_the_generator_only():
    state = torch.get_rng_state()
    a = draw_crop(
        (48, 64),
        (32, 32),
        mode="random",
        scale=(0.5, 1.0),
        generator=torch.Generator().manual_seed(1),
    )
    b = draw_crop(
        (48, 64),
        (32, 32),
        mode="random",
        scale=(0.5, 1.0),
        generator=torch.Generator().manual_seed(1),
    )
    assert a == b
    assert torch.equal(state, torch.get_rng_state())
    assert 24 <= a.height == a.width <= 48
    assert draw_crop((48, 64), (32, 32), mode="center") == CropBox(0, 8, 48, 48)
    with pytest.raises(ValueError, match="generator"):
        draw_crop((48, 64), (32, 32), mode="random")


def test_video_source_is_lazy_shaped_and_repeatable(video):
    idx = snippet_frame_indices(100, 16, 4)
    src = MediaSnippetSource(video, idx, kind="video", crop=CropBox(4, 2, 24, 28), size=(16, 16))
    assert len(src) == 16
    x = src.get_snippets(torch.tensor([3, 15, 0]))
    assert x.shape == (3, 3, 4, 16, 16) and x.dtype == torch.float32
    again = src.get_snippets(torch.tensor([0, 3]))
    assert torch.equal(again[0], x[2]) and torch.equal(again[1], x[0])
    assert src.get_snippets(torch.tensor([], dtype=torch.long)).shape == (0, 3, 4, 16, 16)
    with pytest.raises(IndexError):
        src.get_snippets(torch.tensor([16]))
    clone = pickle.loads(pickle.dumps(src))  # DataLoader workers receive sources by pickle
    assert torch.equal(clone.get_snippets(torch.tensor([3])), x[:1])
    window = SliceSource(src, 3, 10)
    assert len(window) == 7 and torch.equal(window.get_snippets(torch.tensor([0]))[0], x[0])


def test_frame_folder_matches_the_video(video, tmp_path):
    frames = decode_video_frames(video, list(range(100)))
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"img_{i + 1:05d}.png")
    assert find_media(tmp_path, "clip", "frames") == folder
    assert probe_media(folder, "frames").num_frames == 100
    idx = snippet_frame_indices(100, 8, 4)
    kwargs = dict(crop=CropBox(0, 0, 32, 32), size=(32, 32))
    from_video = MediaSnippetSource(video, idx, kind="video", **kwargs)
    from_frames = MediaSnippetSource(folder, idx, kind="frames", **kwargs)
    sel = torch.tensor([0, 5, 7])
    assert torch.equal(from_video.get_snippets(sel), from_frames.get_snippets(sel))


def test_normalisation_and_resize(video):
    src = MediaSnippetSource(
        video,
        snippet_frame_indices(100, 4, 2),
        kind="video",
        crop=CropBox(0, 0, 32, 32),
        size=(32, 32),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    raw = decode_video_frames(video, src.frame_indices[1].tolist())
    x = src.get_snippets(torch.tensor([1]))[0]  # [3, L, H, W]
    assert torch.allclose(x.permute(1, 2, 3, 0), torch.from_numpy(raw).float() / 255)
    small = MediaSnippetSource(
        video,
        src.frame_indices,
        kind="video",
        crop=CropBox(0, 0, 32, 32),
        size=(8, 8),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    ).get_snippets(torch.tensor([1]))[0]
    assert small.shape == (3, 2, 8, 8)
    assert torch.allclose(small.mean(), x.mean(), atol=0.02)  # antialiased, mean-preserving


def test_features_must_be_2d(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((3, 4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[T, C\]"):
        load_features(tmp_path / "f.npy")
    np.save(tmp_path / "g.npy", np.ones((7, 5), dtype=np.float64))
    assert load_features(tmp_path / "g.npy").dtype == np.float32


def test_find_media_refuses_paths_that_leave_the_root(video, tmp_path):
    from sgs_tad.data.video import UnsafeMediaPathError

    root = tmp_path / "root"
    (root / "frames_ok").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert find_media(root, "frames_ok", "frames") == root / "frames_ok"
    for video_id, kind in [("../elsewhere", "frames"), ("..", "frames"), ("", "frames"),
                           (str(video.with_suffix("")), "video")]:  # fmt: skip
        with pytest.raises(UnsafeMediaPathError, match="outside the data root") as info:
            find_media(root, video_id, kind)
        assert info.value.video_id == video_id and info.value.reason == "outside the data root"
    assert find_media(root, "../root/frames_ok", "frames") == root / "../root/frames_ok"  # back in
    (root / "v_link.mp4").symlink_to(video)
    with pytest.raises(UnsafeMediaPathError, match=r"'link' resolves to .*v_clip.mp4"):
        find_media(root, "link", "video")
