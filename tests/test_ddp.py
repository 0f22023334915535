"""SGSTrainer under torch.distributed: 2 gloo processes on the CPU, uneven snippet counts.

Rank 0 gets the short videos and rank 1 the long ones, so the ranks run different numbers
of phase-3 micro-batches (which would hang DDP's per-backward reduction), and a detector
branch that only long videos use leaves a parameter without gradient on rank 0. After k
steps the parameters must equal a single-process run on the union of the data.
"""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from sgs_tad import SequentializedGradientSampler
from sgs_tad.training.optimization import adamw, step_decay
from sgs_tad.training.trainer import SGSTrainer

pytestmark = pytest.mark.ddp

LENGTHS = [3, 9, 4, 11]  # video i goes to rank i % 2 (DistributedSampler, no shuffle)
TARGETS = [0.5, -1.0, 0.25, 2.0]
EPOCHS = 2  # 2 steps per epoch with 2 ranks x 1 video (or 1 process x 2 videos)


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 1)
        self.long_branch = nn.Linear(8, 1)  # used only by videos longer than 8 snippets

    def video_score(self, feats: torch.Tensor) -> torch.Tensor:  # [N_i, C] -> scalar
        score = self.head(feats).mean()
        if feats.shape[0] > 8:
            score = score + self.long_branch(feats).mean()
        return score


def make_models(seed: int) -> tuple[nn.Module, Detector]:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh())
    return encoder, Detector()


def make_data() -> list:
    g = torch.Generator().manual_seed(0)
    return [
        {"snippets": torch.randn(n, 2, 3, generator=g), "target": torch.tensor(t)}
        for n, t in zip(LENGTHS, TARGETS)
    ]


def make_trainer(encoder: nn.Module, detector: Detector, **kwargs) -> SGSTrainer:
    def step(feats, batch, info):
        # The loss is the mean over the local batch: averaging over ranks with equal local
        # batch sizes is then the mean over the global batch.
        lengths = info.lengths
        scores = torch.stack([detector.video_score(feats[i, :n]) for i, n in enumerate(lengths)])
        return (scores - torch.stack(batch["target"])).square().mean()

    return SGSTrainer(
        SequentializedGradientSampler(encoder, ratio=1.0, micro_batch_size=2),
        detector,
        detector_step=step,
        optimizer=adamw(encoder_lr=1e-2, detector_lr=1e-2),
        scheduler=step_decay(milestones=(1,)),
        **kwargs,
    )


def box_len(batch) -> int:
    return int(batch["snippets"][0].shape[0])


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        # Different initial weights per rank: the trainer must broadcast rank 0's.
        encoder, detector = make_models(seed=rank)
        # A DDP-wrapped encoder is accepted: the trainer unwraps it and its reducer hooks stay
        # idle (no DDP forward arms them), so they cannot hang on uneven backward counts.
        wrapped = nn.parallel.DistributedDataParallel(encoder)
        trainer = make_trainer(wrapped, detector, checkpoint_dir=os.path.join(out_dir, "ckpt"))
        assert trainer.encoder is encoder
        trainer.fit(make_data(), epochs=EPOCHS, batch_size=1, shuffle=False)
        params = {
            n: p.detach() for n, p in [*encoder.named_parameters(), *detector.named_parameters()]
        }
        # Each rank evaluates its shard; the result is the mean over all videos.
        metrics = trainer.evaluate(
            make_data(), lambda feats, batch, info: {"n": float(feats.shape[1])}
        )
        # A NaN loss on rank 1 only: both ranks must skip that step (no hang, same weights).
        enc2, det2 = make_models(seed=0)
        calls = []

        def nan_on_rank1(feats, batch, info):
            calls.append(1)
            loss = (det2.video_score(feats[0, : box_len(batch)]) - batch["target"][0]).square()
            return loss * float("nan") if rank == 1 and len(calls) == 1 else loss

        skipper = SGSTrainer(
            SequentializedGradientSampler(enc2, ratio=1.0),
            det2,
            detector_step=nan_on_rank1,
            optimizer=adamw(encoder_lr=1e-2),
        )
        skipper.fit(make_data(), epochs=1, batch_size=1, shuffle=False)
        skip_weights = det2.head.weight.detach()
        torch.save(
            {
                "params": params,
                "step": trainer.step,
                "eval_n": metrics["n"],
                "skipped": skipper.skipped_steps,
                "skip_weights": skip_weights,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()
    # Everything this rank checks is saved. Leave without the interpreter's teardown: freeing
    # torch's gloo/DDP objects there aborted a rank now and then ("terminate called without an
    # active exception", no Python frame left) after the work was done and saved, which would
    # fail the test for nothing it checks. An exception above still fails the rank.
    os._exit(0)


def test_two_gloo_ranks_match_a_single_process_reference(tmp_path):
    ctx = mp.spawn(
        _worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=False,
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank run did not finish in 120 s (a collective hang?)")

    encoder, detector = make_models(seed=0)
    reference = make_trainer(encoder, detector)
    reference.fit(make_data(), epochs=EPOCHS, batch_size=2, shuffle=False)
    expected = {
        n: p.detach() for n, p in [*encoder.named_parameters(), *detector.named_parameters()]
    }

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert results[0]["step"] == results[1]["step"] == reference.step == 2 * EPOCHS
    assert results[0]["eval_n"] == results[1]["eval_n"] == sum(LENGTHS) / len(LENGTHS)
    assert results[0]["skipped"] == results[1]["skipped"] == 1
    assert torch.equal(results[0]["skip_weights"], results[1]["skip_weights"])
    for name, value in expected.items():
        torch.testing.assert_close(results[0]["params"][name], value, msg=name)
        assert torch.equal(results[0]["params"][name], results[1]["params"][name]), name
    # The long-only branch did train (its gradient came from rank 1 alone).
    assert not torch.equal(expected["long_branch.weight"], make_models(0)[1].long_branch.weight)

    from sgs_tad.training.checkpoint import CheckpointManager

    state, _ = CheckpointManager(tmp_path / "ckpt").load_latest()
    assert state["world_size"] == 2 and len(state["per_rank"]) == 2
    assert not torch.equal(
        state["per_rank"][0]["sgs"]["generator"], state["per_rank"][1]["sgs"]["generator"]
    )
