"""SGSTrainer checkpoint/resume: bit-identical continuation on the CPU, and refusals."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from sgs_tad import SequentializedGradientSampler
from sgs_tad.training.callbacks import Callback
from sgs_tad.training.checkpoint import load_checkpoint
from sgs_tad.training.optimization import adamw, step_decay
from sgs_tad.training.trainer import SGSTrainer

EPOCHS, VIDEOS, BATCH = 3, 8, 2  # 4 steps per epoch, 12 in all


def make_models(seed: int, width: int = 8) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    # Dropout in both: phase 3 must replay the masks and a resume must restore the global RNG.
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, width), nn.Dropout(0.2), nn.Tanh())
    detector = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, 1))
    return encoder, detector


def make_data() -> list:
    g = torch.Generator().manual_seed(5)
    return [
        {
            "snippets": torch.randn(4 + i % 3, 2, 3, generator=g),
            "target": torch.randn((), generator=g),
        }
        for i in range(VIDEOS)
    ]


def make_trainer(
    seed: int, directory, callbacks=(), width: int = 8, scheduler=None, settings=None
) -> SGSTrainer:
    encoder, detector = make_models(seed, width)

    def step(feats, batch, info):
        mask = info.mask
        scores = detector(feats).squeeze(-1)
        per_video = (scores * mask).sum(1) / mask.sum(1)
        loss = (per_video - torch.stack(batch["target"])).square().mean()
        # Python and numpy randomness too, to check that their states are restored.
        return loss * (1 + 0.01 * random.random() + 0.01 * float(np.random.rand()))

    return SGSTrainer(
        SequentializedGradientSampler(encoder, ratio=0.5, micro_batch_size=3),
        detector,
        detector_step=step,
        optimizer=adamw(encoder_lr=1e-2, detector_lr=1e-2),
        scheduler=scheduler or step_decay(milestones=(1,)),
        checkpoint_dir=directory,
        checkpoint_every=2,
        keep_last=2,
        seed=11,
        settings=settings,
        callbacks=callbacks,
    )


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.at:
            trainer.request_stop()


def seed_globals() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)


def full_state(trainer: SGSTrainer) -> dict[str, torch.Tensor]:
    out = {f"encoder.{k}": v for k, v in trainer.encoder.state_dict().items()}
    out.update({f"detector.{k}": v for k, v in trainer.detector.state_dict().items()})
    for i, st in trainer.optimizer.state_dict()["state"].items():
        for key, value in st.items():
            out[f"optim.{i}.{key}"] = torch.as_tensor(value)
    return out


@pytest.mark.parametrize("stop_at", [5, 4])  # mid-epoch, and at an epoch's last batch
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, stop_at):
    seed_globals()
    reference = make_trainer(0, tmp_path / "ref")
    reference.fit(make_data(), epochs=EPOCHS, batch_size=BATCH)

    seed_globals()
    first = make_trainer(0, tmp_path / "run", callbacks=[StopAt(stop_at)])
    summary = first.fit(make_data(), epochs=EPOCHS, batch_size=BATCH)
    assert summary["stopped"] and first.step == stop_at

    # A new process: other global RNG, other initial weights; everything comes from the file.
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    resumed = make_trainer(7, tmp_path / "run")
    resumed.fit(make_data(), epochs=EPOCHS, batch_size=BATCH, resume=True)

    assert resumed.step == reference.step == EPOCHS * VIDEOS // BATCH
    expected, got = full_state(reference), full_state(resumed)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert resumed.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]


def test_resume_falls_back_when_the_newest_checkpoint_is_truncated(tmp_path, caplog):
    trainer = make_trainer(0, tmp_path, callbacks=[StopAt(4)])
    trainer.fit(make_data(), epochs=EPOCHS, batch_size=BATCH)
    newest = trainer.checkpoints.checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    resumed = make_trainer(0, tmp_path, callbacks=[StopAt(3)])
    with caplog.at_level("WARNING"):
        resumed.fit(make_data(), epochs=EPOCHS, batch_size=BATCH, resume=True)
    assert "truncated or corrupt" in caplog.text
    assert resumed.step == 3  # resumed from step 2, then stopped at 3


def test_a_resume_directory_from_another_model_is_refused(tmp_path):
    make_trainer(0, tmp_path, callbacks=[StopAt(2)]).fit(make_data(), epochs=1, batch_size=BATCH)
    other = make_trainer(0, tmp_path, width=16)
    with pytest.raises(ValueError, match=r"different model .*encoder\.1\.weight: checkpoint"):
        other.fit(make_data(), epochs=1, batch_size=BATCH, resume=True)


def test_a_resume_with_another_scheduler_is_refused_before_anything_loads(tmp_path):
    trainer = make_trainer(0, tmp_path, callbacks=[StopAt(2)])
    trainer.fit(make_data(), epochs=1, batch_size=BATCH)
    state = load_checkpoint(trainer.checkpoints.checkpoints()[-1])
    fresh = make_trainer(
        1, tmp_path, scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    )
    before = [p.detach().clone() for p in fresh.parameters]
    with pytest.raises(ValueError, match=r"MultiStepLR.*LambdaLR.*schedule it was trained"):
        fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters))  # nothing loaded
    state.pop("scheduler_type")  # a checkpoint from before the check: loads as it did
    make_trainer(1, tmp_path).load_state_dict(state)


def test_a_changed_world_size_is_explained(tmp_path):
    trainer = make_trainer(0, tmp_path, callbacks=[StopAt(2)])
    trainer.fit(make_data(), epochs=EPOCHS, batch_size=BATCH)
    state = load_checkpoint(trainer.checkpoints.checkpoints()[-1])
    state["world_size"] = 4
    fresh = make_trainer(1, tmp_path)
    with pytest.raises(ValueError, match=r"world size 4, this run has 1.*strict_world_size=False"):
        fresh.load_state_dict(state)
    fresh.load_state_dict(state, strict_world_size=False)
    assert fresh.step == 2 and fresh.epoch_iteration == 0
    for a, b in zip(fresh.parameters, trainer.parameters):
        assert torch.equal(a, b)


def test_resume_from_an_explicit_file_and_from_an_empty_directory(tmp_path, caplog):
    trainer = make_trainer(0, tmp_path / "a", callbacks=[StopAt(2)])
    trainer.fit(make_data(), epochs=EPOCHS, batch_size=BATCH)
    path = trainer.checkpoints.checkpoints()[-1]
    again = make_trainer(3, tmp_path / "b", callbacks=[StopAt(3)])
    again.fit(make_data(), epochs=EPOCHS, batch_size=BATCH, resume=path)
    assert again.step == 3
    fresh = make_trainer(3, tmp_path / "empty", callbacks=[StopAt(1)])
    with caplog.at_level("WARNING"):
        fresh.fit(make_data(), epochs=EPOCHS, batch_size=BATCH, resume=True)  # nothing there
    assert fresh.step == 1
    assert "no checkpoint in" in caplog.text


def test_a_resume_with_other_settings_is_refused_naming_each_unless_overridden(tmp_path):
    settings = {"seed": 0, "epochs": 3, "batch_size": 2}
    trainer = make_trainer(0, tmp_path, callbacks=[StopAt(2)], settings=settings)
    trainer.fit(make_data(), epochs=EPOCHS, batch_size=BATCH)
    changed = {"seed": 1, "epochs": 3, "batch_size": 4}
    fresh = make_trainer(0, tmp_path, settings=changed)
    before = [p.detach().clone() for p in fresh.parameters]
    with pytest.raises(ValueError, match=r"batch_size: checkpoint 2, now 4; seed: checkpoint 0"):
        fresh.fit(make_data(), epochs=EPOCHS, batch_size=BATCH, resume=True)
    assert fresh.step == 0 and all(torch.equal(a, b) for a, b in zip(before, fresh.parameters))
    fresh = make_trainer(0, tmp_path, settings=changed, callbacks=[StopAt(3)])
    fresh.fit(make_data(), epochs=EPOCHS, batch_size=BATCH, resume=True, resume_override=True)
    assert fresh.step == 3


def test_a_version_1_checkpoint_without_settings_still_loads(tmp_path):
    trainer = make_trainer(0, tmp_path, callbacks=[StopAt(2)])
    trainer.fit(make_data(), epochs=EPOCHS, batch_size=BATCH)
    state = load_checkpoint(trainer.checkpoints.checkpoints()[-1])
    state.pop("settings")
    state["version"] = 1
    fresh = make_trainer(1, tmp_path, settings={"seed": 5})
    fresh.load_state_dict(state)
    assert fresh.step == 2
    for a, b in zip(fresh.parameters, trainer.parameters):
        assert torch.equal(a, b)


def _small3d_run(directory, *, epochs: int, resume: bool = False, stop: int | None = None):
    from sgs_tad.encoders import build_encoder, freeze_encoder

    torch.manual_seed(0)
    encoder = freeze_encoder(build_encoder("small3d"), frozen_stages=1)
    detector = nn.Linear(encoder.out_channels, 1)
    g = torch.Generator().manual_seed(1)
    data = [{"snippets": torch.randn(16, 3, 4, 32, 32, generator=g)} for _ in range(3)]
    # encode_batch_size="auto", as in the main job: measured on the first batch.
    engine = SequentializedGradientSampler(encoder, ratio=0.3, micro_batch_size=4,
                                           encode_batch_size="auto")  # fmt: skip
    trainer = SGSTrainer(engine, detector, loss_fn=lambda out, batch, info: out.square().mean(),
                         checkpoint_dir=directory, seed=3,
                         callbacks=[StopAt(stop)] if stop else [])  # fmt: skip
    trainer.fit(data, epochs=epochs, resume=resume)
    return trainer


def test_resume_restores_the_measured_phase1_size_bit_identically(tmp_path) -> None:
    """Issue 23 item 10: the main job's resume drifted (~1e-6) because a fresh engine ran its
    first batches at K and measured "auto" anew; phase-1 calls of another size round
    differently on the CPU."""
    torch.set_num_threads(1)
    whole = _small3d_run(tmp_path / "a", epochs=2)
    _small3d_run(tmp_path / "b", epochs=2, stop=2)
    resumed = _small3d_run(tmp_path / "b", epochs=2, resume=True)
    assert resumed.engine.encode_batch_size == whole.engine.encode_batch_size > 4
    for (name, p), q in zip(
        [*whole.encoder.named_parameters(), *whole.detector.named_parameters()],
        [*resumed.encoder.parameters(), *resumed.detector.parameters()],
    ):
        assert torch.equal(p, q), name
