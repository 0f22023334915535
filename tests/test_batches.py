"""The batch contract and collate_videos."""

from __future__ import annotations

import pytest
import torch

from sgs_tad.engine.sources import TensorSource
from sgs_tad.training.batches import check_batch, collate_videos, count_snippets, count_videos


def test_collate_keeps_one_entry_per_video_without_padding():
    batch = collate_videos(
        [
            {"snippets": torch.zeros(3, 2), "segments": torch.zeros(1, 2)},
            {"snippets": TensorSource(torch.zeros(5, 2)), "segments": torch.zeros(2, 2)},
        ]
    )
    assert [len(s) for s in batch["snippets"]] == [3, 5]
    assert [s.shape[0] for s in batch["segments"]] == [1, 2]
    assert count_videos(batch["snippets"]) == 2 and count_snippets(batch["snippets"]) == 8
    assert count_videos(torch.zeros(4, 6, 2)) == 4 and count_snippets(torch.zeros(4, 6, 2)) == 24


def test_collate_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        collate_videos([])
    with pytest.raises(TypeError, match="item 0 is a Tensor"):
        collate_videos([torch.zeros(3)])
    with pytest.raises(ValueError, match="no 'snippets'"):
        collate_videos([{"frames": torch.zeros(3)}])
    with pytest.raises(ValueError, match="item 1 has keys"):
        collate_videos([{"snippets": torch.zeros(3)}, {"snippets": torch.zeros(3), "x": 1}])


def test_check_batch():
    batch = {"snippets": torch.zeros(1, 3, 2), "labels": [1]}
    assert check_batch(batch, ["labels"]) is batch
    with pytest.raises(ValueError, match=r"has keys \['labels', 'snippets'\] but the trainer"):
        check_batch(batch, ["segments"])
    with pytest.raises(TypeError, match="must be a mapping"):
        check_batch([torch.zeros(3)])


def test_make_loader_shards_datasets_and_passes_iterables_through():
    from sgs_tad.training.batches import make_loader

    items = [{"snippets": torch.zeros(2 + i, 1)} for i in range(5)]
    loader, sampler = make_loader(items, seed=0, batch_size=2, shuffle=False)
    sampler.set_epoch(0)
    assert [len(b["snippets"]) for b in loader] == [2, 2, 1]
    batches = [{"snippets": torch.zeros(1, 3, 1)}]
    assert make_loader(iter(batches), seed=0)[1] is None
    with pytest.raises(ValueError, match="empty"):
        make_loader([], seed=0)
    with pytest.raises(TypeError, match="IterableDataset"):
        make_loader(torch.utils.data.IterableDataset(), seed=0)
    with pytest.raises(TypeError, match="got int"):
        make_loader(3, seed=0)
