"""The detector's running statistics under 2 gloo ranks (issue 20, F8d): averaged over ranks
after every optimizer step, so the ranks normalise alike and checkpoints hold the average."""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from sgs_tad import SequentializedGradientSampler
from sgs_tad.training.distributed import all_reduce_buffers
from sgs_tad.training.trainer import SGSTrainer

pytestmark = pytest.mark.ddp


class RunningMean(nn.Module):
    """A detector with a running feature mean (as ETAD's FeatureStandardizer) and a flag."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(8, 1)
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.mean.lerp_(feats.detach().reshape(-1, 8).mean(0), 0.5)
                self.seen += 1
        return self.head(feats - self.mean)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        module = RunningMean()
        module.mean.fill_(float(rank))  # 0 and 1: the average is 0.5
        all_reduce_buffers(module)
        direct = module.mean.clone()
        torch.manual_seed(0)
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh())
        detector = RunningMean()
        g = torch.Generator().manual_seed(0)
        # Each rank gets its own videos (the sampler shards them): different statistics.
        data = [{"snippets": torch.randn(5, 2, 3, generator=g) * (1 + 3 * i),
                 "target": torch.tensor(0.0)} for i in range(4)]  # fmt: skip

        def loss_fn(scores, batch, info):
            return scores.square().mean()

        trainer = SGSTrainer(SequentializedGradientSampler(encoder, ratio=1.0), detector,
                             loss_fn=loss_fn)  # fmt: skip
        trainer.fit(data, epochs=1, batch_size=1, shuffle=False)
        torch.save({"direct": direct, "mean": detector.mean, "seen": detector.seen},
                   os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()
    # Everything this rank checks is saved. Leave without the interpreter's teardown: freeing
    # torch's gloo/DDP objects there aborted a rank now and then ("terminate called without an
    # active exception", no Python frame left) after the work was done and saved, which would
    # fail the test for nothing it checks. An exception above still fails the rank.
    os._exit(0)


def test_detector_buffers_are_averaged_over_two_gloo_ranks(tmp_path):
    ctx = mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank run did not finish in 120 s (a collective hang?)")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(r0["direct"], torch.full((8,), 0.5))
    assert torch.equal(r0["mean"], r1["mean"]), "the ranks' running statistics differ"
    assert int(r0["seen"]) == int(r1["seen"]) == 2  # integer buffers are not averaged


def test_all_reduce_buffers_without_a_process_group_is_a_no_op():
    module = RunningMean()
    module.mean.fill_(3.0)
    all_reduce_buffers(module)
    assert torch.equal(module.mean, torch.full((8,), 3.0))
