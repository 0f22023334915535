"""Detector adapters with a stand-in for ActionFormer: list of dicts in, loss dict out, and the
same padding under ``torch.no_grad`` that cuts the gradient to the input features."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sgs_tad import SequentializedGradientSampler, StepInfo
from sgs_tad.training.adapters import enable_grad, snippet_lengths, video_list_step
from sgs_tad.training.callbacks import Callback
from sgs_tad.training.trainer import SGSTrainer

C, MAX_LEN, CLASSES = 8, 16, 3


class MiniActionFormer(nn.Module):
    """ActionFormer's interface: ``forward(video_list)`` with ``feats`` C x T_i, ``segments``
    K x 2 and ``labels`` K per video; returns ``{"cls_loss", "reg_loss", "final_loss"}``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv1d(C, 16, 3, padding=1)
        self.cls_head = nn.Conv1d(16, CLASSES, 1)
        self.reg_head = nn.Conv1d(16, 2, 1)

    @torch.no_grad()
    def preprocessing(self, video_list, padding_val=0.0):
        # As ActionFormer does in training: pad every video to max_seq_len with copy_ into a
        # new tensor, under no_grad.
        feats = [x["feats"] for x in video_list]
        lengths = torch.as_tensor([f.shape[-1] for f in feats])
        batched = feats[0].new_full([len(feats), feats[0].shape[0], MAX_LEN], padding_val)
        for feat, pad in zip(feats, batched):
            pad[..., : feat.shape[-1]].copy_(feat)
        masks = torch.arange(MAX_LEN)[None, :] < lengths[:, None]
        return batched, masks

    def forward(self, video_list):
        x, mask = self.preprocessing(video_list)
        h = F.relu(self.backbone(x))
        logits = self.cls_head(h).transpose(1, 2)  # [B, T, classes]
        offsets = self.reg_head(h).transpose(1, 2)  # [B, T, 2]
        target = torch.zeros(x.shape[0], MAX_LEN, CLASSES)
        reg_target = torch.zeros(x.shape[0], MAX_LEN, 2)
        for i, video in enumerate(video_list):
            for (start, end), label in zip(video["segments"].tolist(), video["labels"].tolist()):
                t = torch.arange(MAX_LEN, dtype=torch.float)
                inside = (t >= start) & (t <= end)
                target[i, inside, label] = 1.0
                reg_target[i, inside] = torch.stack([t - start, end - t], 1)[inside]
        cls_loss = F.binary_cross_entropy_with_logits(logits[mask], target[mask])
        reg_loss = F.smooth_l1_loss(offsets[mask], reg_target[mask])
        return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": cls_loss + reg_loss}


def grad_preprocessing(self, video_list, padding_val=0.0):
    """The adapter's replacement: the same padding, out of place and with grad (as in
    examples/actionformer_e2e.py). ActionFormer's own loop writes into the views that
    iterating a tensor creates, which autograd refuses, so un-decorating it is not enough."""
    feats = [x["feats"] for x in video_list]
    lengths = torch.as_tensor([f.shape[-1] for f in feats])
    batched = torch.stack([F.pad(f, (0, MAX_LEN - f.shape[-1]), value=padding_val) for f in feats])
    masks = torch.arange(MAX_LEN)[None, :] < lengths[:, None]
    return batched, masks


def with_grad_padding(model: MiniActionFormer) -> MiniActionFormer:
    model.preprocessing = types.MethodType(grad_preprocessing, model)
    return model


def make_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, C), nn.Tanh())


def make_data(n: int = 2) -> list:
    g = torch.Generator().manual_seed(1)
    lengths = [10, 14, 12, 16]
    return [
        {
            "snippets": torch.randn(lengths[i % 4], 2, 3, generator=g),
            "segments": torch.tensor([[2.0, 5.0], [7.0, 9.0]]),
            "labels": torch.tensor([i % CLASSES, (i + 1) % CLASSES]),
        }
        for i in range(n)
    ]


def make_trainer(model: nn.Module, **kwargs) -> SGSTrainer:
    return SGSTrainer(
        SequentializedGradientSampler(make_encoder(), ratio=1.0, micro_batch_size=4),
        model,
        detector_step=video_list_step(model, keys=("segments", "labels")),
        loss_key="final_loss",
        required_keys=("segments", "labels"),
        **kwargs,
    )


def test_no_grad_padding_is_detected_loudly():
    torch.manual_seed(2)
    trainer = make_trainer(MiniActionFormer())
    with pytest.raises(RuntimeError, match=r"feats.grad is None.*ActionFormer.*preprocessing"):
        trainer.fit(make_data(), epochs=1)


def test_unwrapping_no_grad_is_not_enough_for_in_place_padding():
    model = MiniActionFormer()
    enable_grad(model, "preprocessing")
    with pytest.raises(RuntimeError, match="modified inplace"):
        make_trainer(model).fit(make_data(), epochs=1)


def test_grad_padding_trains_the_encoder_with_the_end_to_end_gradient():
    torch.manual_seed(2)
    model = with_grad_padding(MiniActionFormer())
    grads = {}

    class Capture(Callback):
        def on_before_optimizer_step(self, trainer):
            grads.update({n: p.grad.clone() for n, p in trainer.encoder.named_parameters()})

    trainer = make_trainer(model, callbacks=[Capture()])
    before = [p.detach().clone() for p in trainer.encoder.parameters()]
    trainer.fit(make_data(), epochs=1, batch_size=2, shuffle=False)
    assert all(not torch.equal(a, b) for a, b in zip(before, trainer.encoder.parameters()))

    # Plain end to end: the same model (grad-enabled padding), no SGS.
    torch.manual_seed(2)
    reference_model = with_grad_padding(MiniActionFormer())
    encoder = make_encoder()
    videos = make_data()
    video_list = [
        {"feats": encoder(v["snippets"]).T, "segments": v["segments"], "labels": v["labels"]}
        for v in videos
    ]
    reference_model(video_list)["final_loss"].backward()
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


class OutOfPlacePadding(MiniActionFormer):
    @torch.no_grad()
    def preprocessing(self, video_list, padding_val=0.0):
        return grad_preprocessing(self, video_list, padding_val)


def test_enable_grad_is_per_instance_and_enough_for_out_of_place_padding():
    a, b = OutOfPlacePadding(), OutOfPlacePadding()
    enable_grad(a, "preprocessing")
    feats = torch.randn(C, 5, requires_grad=True)
    assert a.preprocessing([{"feats": feats}])[0].requires_grad
    assert not b.preprocessing([{"feats": feats}])[0].requires_grad
    torch.manual_seed(2)
    trainer = make_trainer(a)
    before = [p.detach().clone() for p in trainer.encoder.parameters()]
    trainer.fit(make_data(), epochs=1)
    assert all(not torch.equal(x, y) for x, y in zip(before, trainer.encoder.parameters()))


def test_enable_grad_errors():
    with pytest.raises(AttributeError, match="no method 'pad'"):
        enable_grad(MiniActionFormer(), "pad")
    with pytest.raises(TypeError, match="not\\s+decorated"):
        enable_grad(MiniActionFormer(), "forward")


def test_missing_target_keys_are_named():
    model = with_grad_padding(MiniActionFormer())
    data = [{"snippets": d["snippets"], "labels": d["labels"]} for d in make_data()]
    with pytest.raises(ValueError, match="needs 'segments'"):
        make_trainer(model).fit(data, epochs=1)


def test_video_list_layout_and_lengths():
    seen = []
    step = video_list_step(lambda vl: seen.extend(vl) or torch.zeros(()), keys=(), layout="TC")
    feats = torch.randn(2, 7, C)
    step(
        feats, {"snippets": [torch.zeros(4, 1), torch.zeros(7, 1)]}, StepInfo.from_lengths([4, 7])
    )
    assert [v["feats"].shape for v in seen] == [(4, C), (7, C)]
    assert snippet_lengths(torch.zeros(3, 5, 2)) == [5, 5, 5]
    with pytest.raises(ValueError, match="layout"):
        video_list_step(lambda vl: None, layout="NCT")
    with pytest.raises(ValueError, match="2 videos but the features have B = 3"):
        batch = {"snippets": [torch.zeros(4, 1), torch.zeros(7, 1)]}
        step(torch.randn(3, 7, C), batch, StepInfo.from_lengths([4, 7]))


@pytest.mark.slow
def test_the_actionformer_example_runs_against_the_real_code():
    """Runs only where ActionFormer's repository is on PYTHONPATH (its ``libs`` package)."""
    pytest.importorskip("libs.modeling", reason="ActionFormer's repository is not on PYTHONPATH")
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "actionformer_e2e.py"
    result = subprocess.run(
        [sys.executable, str(example), "--epochs", "1", "--videos", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained 1 steps" in result.stdout
