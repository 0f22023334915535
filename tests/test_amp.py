"""fp16 with a GradScaler: overflows the scaler must see, and steps it skips (issue 20, F2/F17).

Run on the CPU's fp16 autocast with ``torch.amp.GradScaler("cpu")``, which behaves as on CUDA:
the scale starts at 2**16 and halves on every step whose gradients hold an inf.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgs_tad import EndToEnd, SequentializedGradientSampler
from sgs_tad.training.callbacks import Callback
from sgs_tad.training.optimization import adamw, warmup_cosine
from sgs_tad.training.trainer import SGSTrainer

S = (2, 3)


class _Gain(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``gain`` in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: float) -> torch.Tensor:  # type: ignore[override]
        ctx.gain = gain
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.gain, None


class AmplifyingDetector(nn.Module):
    """Stands for ETAD's FeatureStandardizer: a gain applied *after* the fp32 cast, so the
    amplified gradient is cast back into the fp16 feature buffer (``feats.grad``) and overflows
    there, while every parameter gradient (computed in fp32 before the gain) stays finite."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.gain = gain
        self.head = nn.Linear(8, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = _Gain.apply(feats.float(), self.gain)
        return self.head(x)


def make_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh())


def make_data(n: int) -> list:
    g = torch.Generator().manual_seed(2)
    return [{"snippets": torch.randn(5, *S, generator=g), "target": torch.randn((), generator=g)}
            for _ in range(n)]  # fmt: skip


def loss_fn(scores, batch, info):
    return (scores.float().mean(dim=(1, 2)) - torch.stack(batch["target"])).square().mean()


class Steps(Callback):
    """Records, per optimizer step, the scale after it and the encoder weight."""

    def __init__(self) -> None:
        self.scales: list[float] = []
        self.weights: list[torch.Tensor] = []

    def on_step_end(self, trainer: SGSTrainer, record) -> None:
        self.scales.append(trainer.scaler.get_scale())
        self.weights.append(trainer.encoder[1].weight.detach().clone())


@pytest.mark.parametrize("engine_policy", ["raise", "skip"])
@pytest.mark.parametrize("trainer_policy", ["raise", "skip"])
def test_fp16_feature_gradient_overflow_backs_the_scale_off(engine_policy, trainer_policy):
    """Only ``feats.grad`` overflows: the scale backs off, each such step counts as skipped,
    and once the scale is low enough the encoder trains."""
    steps = Steps()
    engine = SequentializedGradientSampler(make_encoder(), ratio=1.0,
                                           on_nonfinite_grad=engine_policy)  # fmt: skip
    trainer = SGSTrainer(engine, AmplifyingDetector(gain=1e3), loss_fn=loss_fn, amp="fp16",
                         nonfinite=trainer_policy, optimizer=adamw(encoder_lr=1e-2),
                         callbacks=[steps])  # fmt: skip
    summary = trainer.fit(make_data(16), epochs=1, shuffle=False)
    assert summary["step"] == 16
    backoffs = sum(b < a for a, b in zip([65536.0, *steps.scales], steps.scales))
    assert backoffs >= 1, "the scale never backed off"
    assert summary["skipped_steps"] == backoffs
    # After the last back-off the encoder is updated at every step.
    last = max(i for i, (a, b) in enumerate(zip([65536.0, *steps.scales], steps.scales)) if b < a)
    assert last < 15
    later = steps.weights[last:]
    assert all(not torch.equal(a, b) for a, b in zip(later, later[1:]))
    assert not torch.equal(steps.weights[last], make_encoder()[1].weight)


def test_fp16_overflow_in_a_parameter_gradient_counts_as_skipped_and_holds_the_schedule():
    """F17: a step the GradScaler skips internally (inf in an encoder gradient, end to end) is
    a skipped step, and a per-step LR schedule does not advance for it."""
    steps = Steps()
    schedule = warmup_cosine(total_steps=100, warmup_steps=0)
    trainer = SGSTrainer(EndToEnd(make_encoder()), AmplifyingDetector(gain=1e3),
                         loss_fn=loss_fn, amp="fp16", scheduler=schedule,
                         callbacks=[steps])  # fmt: skip
    summary = trainer.fit(make_data(12), epochs=1, shuffle=False)
    backoffs = sum(b < a for a, b in zip([65536.0, *steps.scales], steps.scales))
    assert backoffs >= 1
    assert summary["skipped_steps"] == backoffs
    assert trainer.scheduler.last_epoch == 12 - backoffs


def test_sgs_step_with_a_scaler_shows_a_feature_overflow_to_the_scaler():
    encoder, detector = make_encoder(), AmplifyingDetector(gain=1e3)
    sgs = SequentializedGradientSampler(encoder, ratio=1.0)  # on_nonfinite_grad="raise"
    optimizer = torch.optim.SGD([*encoder.parameters(), *detector.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    before = encoder[1].weight.detach().clone()
    snippets = torch.randn(1, 5, *S)
    with torch.autocast("cpu", dtype=torch.float16):
        sgs.step(snippets, lambda feats: detector(feats).float().mean(), scaler=scaler)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 32768.0
    assert torch.equal(encoder[1].weight, before)


def test_bf16_on_a_gpu_without_bf16_is_refused_at_construction(monkeypatch):
    """F17: amp="bf16" on a CUDA device whose torch.cuda.is_bf16_supported() is False fails
    when the trainer is built, naming the fix, not deep inside the first step."""
    engine = EndToEnd(make_encoder())
    monkeypatch.setattr(EndToEnd, "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"amp='bf16' needs a GPU with bf16 support.*fp16"):
        SGSTrainer(engine, AmplifyingDetector(1.0), loss_fn=loss_fn, amp="bf16")
    # The check reads the device: bf16 on the CPU and fp16 on that GPU pass it.
    from sgs_tad.training.policies import check_amp_device

    check_amp_device("bf16", torch.device("cpu"))
    check_amp_device("fp16", torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    check_amp_device("bf16", torch.device("cuda", 0))
