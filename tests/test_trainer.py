"""SGSTrainer: gradients, the single optimizer step, accumulation, AMP, policies, bad input."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import torch
from torch import nn

from sgs_tad import (
    EndToEnd,
    SequentializedGradientSampler,
    SnippetReadError,
    freeze_norm_layers,
    freeze_stages,
)
from sgs_tad.training.callbacks import Callback, GradientStats
from sgs_tad.training.optimization import adamw, step_decay
from sgs_tad.training.trainer import NO_GRAD_FEATURES_MESSAGE, SGSTrainer

S = (2, 3)  # snippet shape


def make_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh())


def make_detector(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(8, 1)


def make_data(n_videos: int = 4, lengths: tuple[int, ...] = (5, 7, 6, 5), seed: int = 2) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "snippets": torch.randn(lengths[i % len(lengths)], *S, generator=g),
            "target": torch.randn((), generator=g),
        }
        for i in range(n_videos)
    ]


def masked_step(detector: nn.Module):
    """detector_step: mean over each video's valid snippets, then mean over videos."""

    def step(feats: torch.Tensor, batch, info) -> torch.Tensor:
        mask = info.mask  # [B, N_max]
        scores = detector(feats).squeeze(-1)  # [B, N_max]
        per_video = (scores * mask).sum(1) / mask.sum(1)
        return (per_video - torch.stack(batch["target"])).square().mean()

    return step


ENGINE_OPTIONS = ("micro_batch_size", "encode_batch_size", "ratio", "sampler", "grad_scale")
LR_OPTIONS = ("encoder_lr", "detector_lr", "weight_decay")


def build(**kwargs) -> SGSTrainer:
    """A trainer on the test models; engine and learning-rate options are routed to them."""
    encoder, detector = kwargs.pop("encoder", None), kwargs.pop("detector", None)
    encoder = encoder or make_encoder()
    detector = detector or make_detector()
    if "loss_fn" not in kwargs and "detector_step" not in kwargs:
        kwargs["detector_step"] = masked_step(detector)
    engine_options = {k: kwargs.pop(k) for k in ENGINE_OPTIONS if k in kwargs}
    engine_options.setdefault("ratio", 1.0)
    engine_options["on_nonfinite_grad"] = "skip"
    lrs = {k: kwargs.pop(k) for k in LR_OPTIONS if k in kwargs}
    if lrs:
        kwargs["optimizer"] = adamw(**lrs)
    if "lr_milestones" in kwargs:
        kwargs["scheduler"] = step_decay(milestones=kwargs.pop("lr_milestones"))
    engine = SequentializedGradientSampler(encoder, **engine_options)
    return SGSTrainer(engine, detector, **kwargs)


def reference_loss(encoder: nn.Module, detector: nn.Module, items: list) -> torch.Tensor:
    """Plain end-to-end loss (no SGS) on a batch of items, matching masked_step."""
    losses = [
        (detector(encoder(it["snippets"])).squeeze(-1).mean() - it["target"]).square()
        for it in items
    ]
    return torch.stack(losses).mean()


class GradCapture(Callback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: SGSTrainer) -> None:
        grads = {}
        for prefix, module in (("encoder", trainer.encoder), ("detector", trainer.detector)):
            for name, p in module.named_parameters():
                if p.grad is not None:
                    grads[f"{prefix}.{name}"] = p.grad.detach().clone()
        self.grads.append(grads)


def test_ratio_one_gradient_equals_end_to_end_for_every_parameter():
    data = make_data(2, lengths=(5, 8))
    capture = GradCapture()
    trainer = build(callbacks=[capture], micro_batch_size=3)
    trainer.fit(data, epochs=1, batch_size=2, shuffle=False)
    encoder, detector = make_encoder(), make_detector()
    reference_loss(encoder, detector, data).backward()
    expected = {f"encoder.{n}": p.grad for n, p in encoder.named_parameters()}
    expected.update({f"detector.{n}": p.grad for n, p in detector.named_parameters()})
    assert capture.grads[0].keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(capture.grads[0][name], grad, msg=name)


def test_one_optimizer_step_per_iteration_and_zeroed_after():
    steps = []

    def factory(enc, det):
        opt = torch.optim.SGD([*enc.parameters(), *det.parameters()], lr=0.1)
        opt.register_step_post_hook(lambda *_: steps.append(1))
        return opt

    trainer = build(optimizer=factory, lr_milestones=())
    trainer.fit(make_data(4), epochs=1, batch_size=1)
    assert len(steps) == 4 and trainer.step == 4
    assert all(p.grad is None for p in trainer.parameters)


def test_accumulation_equals_a_bigger_batch():
    data = make_data(4, lengths=(6,))
    big, acc = GradCapture(), GradCapture()
    build(callbacks=[big]).fit(data, epochs=1, batch_size=4, shuffle=False)
    build(callbacks=[acc], accumulation_steps=2).fit(data, epochs=1, batch_size=2, shuffle=False)
    assert len(big.grads) == 1 and len(acc.grads) == 1
    for name, grad in big.grads[0].items():
        torch.testing.assert_close(acc.grads[0][name], grad, msg=name)


def test_partial_last_window_is_flushed_and_averaged():
    capture = GradCapture()
    trainer = build(callbacks=[capture], accumulation_steps=4)
    trainer.fit(make_data(6, lengths=(6,)), epochs=1, batch_size=1, shuffle=False)
    assert trainer.step == 2 and len(capture.grads) == 2


def test_paper_defaults_adamw_two_groups_and_step_decay_after_epoch_5():
    lrs = []

    class LR(Callback):
        def on_epoch_start(self, trainer, epoch):
            lrs.append([g["lr"] for g in trainer.optimizer.param_groups])

    trainer = build(callbacks=[LR()])
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [1e-4, 1e-4]
    trainer.fit(make_data(1), epochs=6)
    assert lrs[0] == [1e-6, 1e-3] and lrs[4] == [1e-6, 1e-3]
    assert lrs[5] == pytest.approx([1e-7, 1e-4])


def test_gradient_clipping_bounds_the_global_norm():
    capture = GradCapture()
    trainer = build(callbacks=[capture], max_grad_norm=1e-3)
    trainer.fit(make_data(1), epochs=1)
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in capture.grads[0].values()]))
    assert total <= 1e-3 * 1.001


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_nonfinite_loss_policy(policy):
    calls = []

    def step(feats, batch, info):
        calls.append(1)
        loss = feats.square().mean()
        return loss + (float("nan") if len(calls) == 2 else 1.0)

    trainer = build(detector_step=step, nonfinite=policy, encoder_lr=0.1)
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="non-finite loss"):
            trainer.fit(make_data(3), epochs=1, shuffle=False)
        return
    before = [p.detach().clone() for p in trainer.parameters]
    summary = trainer.fit(make_data(3), epochs=1, shuffle=False)
    assert summary["skipped_steps"] == 1 and trainer.step == 3
    assert all(torch.isfinite(p).all() for p in trainer.parameters)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.parameters))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_all_phases(amp):
    capture = GradCapture()
    trainer = build(amp=amp, callbacks=[capture])
    summary = trainer.fit(make_data(4), epochs=1)
    assert summary["step"] == 4
    # fp16: the GradScaler starts at 2**16, so early steps may overflow in fp16 (phase 3 and
    # the step are then skipped) until it has backed off; the last step is a real one.
    assert len(capture.grads[-1]) == 4
    assert all(torch.isfinite(g).all() for g in capture.grads[-1].values())
    assert (trainer.scaler is not None) == (amp == "fp16")
    assert "scaler" in trainer.state_dict()


def test_loss_fn_path_and_loss_dict_with_logged_parts(tmp_path):
    def loss_fn(scores, batch, info):  # equal lengths: no mask needed
        loss = (scores.mean(dim=(1, 2)) - torch.stack(batch["target"])).square().mean()
        return {"final_loss": loss, "aux": loss.detach() * 2}

    trainer = build(loss_fn=loss_fn, loss_key="final_loss", log_dir=tmp_path, log_every=1)
    trainer.fit(make_data(2, lengths=(5,)), epochs=1)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    assert {"loss", "aux", "lr", "snippets_per_s", "grad_norm", "epoch"} <= records[0].keys()
    assert records[0]["aux"] == pytest.approx(2 * records[0]["loss"])


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    trainer = build(log_dir=tmp_path, tensorboard=True, log_every=1)
    trainer.fit(make_data(1), epochs=1)
    assert list((tmp_path / "tensorboard").glob("events.*"))


def test_progress_bar_with_and_without_tqdm(monkeypatch, caplog):
    pytest.importorskip("tqdm")
    build(progress=True).fit(make_data(2), epochs=1)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # makes `import tqdm.auto` fail
    with caplog.at_level("WARNING"):
        build(progress=True).fit(make_data(2), epochs=1)
    assert "tqdm is not installed" in caplog.text


def test_phase_summary_covers_the_phases():
    summary = build().fit(make_data(2), epochs=1)
    assert {"encode", "detector", "update", "optimizer"} <= summary["phases"].keys()
    assert summary["phases"]["encode"]["calls"] == 2


def test_evaluate_weighted_mean_restores_modes_and_sampler_state():
    trainer = build(ratio=0.5)
    trainer.encoder.train()
    state = trainer.engine.generator.get_state()
    seen_modes = []

    def eval_step(feats, batch, info):
        seen_modes.append(trainer.encoder.training)
        return {"n": float(feats.shape[1])}

    metrics = trainer.evaluate(make_data(3, lengths=(4, 4, 10)), eval_step, batch_size=2)
    assert metrics["n"] == pytest.approx((2 * 4 + 1 * 10) / 3)  # batches [4,4], [10]
    assert seen_modes == [False, False] and trainer.encoder.training
    assert torch.equal(trainer.engine.generator.get_state(), state)


def test_frozen_stages_and_frozen_norm():
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="BatchNorm"):
        build(encoder=encoder)
    encoder = freeze_norm_layers(encoder)
    freeze_stages(encoder, ["1"])
    trainer = build(encoder=encoder, encoder_lr=0.1)
    frozen = trainer.encoder[1].weight.detach().clone()
    last = trainer.encoder[3].weight.detach().clone()
    trainer.fit(make_data(2), epochs=1)
    assert torch.equal(trainer.encoder[1].weight, frozen)
    assert not torch.equal(trainer.encoder[3].weight, last)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_and_return(tmp_path, sig):
    class Kill(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 2:
                os.kill(os.getpid(), sig)

    before = signal.getsignal(sig)
    trainer = build(checkpoint_dir=tmp_path, callbacks=[Kill()])
    summary = trainer.fit(make_data(4), epochs=2)
    assert summary["stopped"] and trainer.step == 2
    assert [p.name for p in trainer.checkpoints.checkpoints()] == ["checkpoint-000000002.pt"]
    assert signal.getsignal(sig) is before


def test_callback_order():
    events = []

    class Record(Callback):
        def on_fit_start(self, trainer):
            events.append("fit_start")

        def on_epoch_start(self, trainer, epoch):
            events.append("epoch_start")

        def on_batch_start(self, trainer, batch):
            events.append("batch")

        def on_before_optimizer_step(self, trainer):
            events.append("before_step")

        def on_step_end(self, trainer, metrics):
            events.append("step_end")

        def on_epoch_end(self, trainer, epoch, metrics):
            events.append("epoch_end")

        def on_fit_end(self, trainer):
            events.append("fit_end")

    build(callbacks=[Record()], accumulation_steps=2).fit(make_data(2), epochs=1)
    assert events == [
        "fit_start",
        "epoch_start",
        "batch",
        "batch",
        "before_step",
        "step_end",
        "epoch_end",
        "fit_end",
    ]


# ----------------------------------------------------------------------------------- bad input


def test_bad_options_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="exactly one of loss_fn"):
        SGSTrainer(SequentializedGradientSampler(make_encoder()), make_detector())
    with pytest.raises(TypeError, match=r"not the encoder module .*Wrap it"):
        SGSTrainer(make_encoder(), make_detector(), loss_fn=lambda *a: a[0].sum())
    with pytest.raises(ValueError, match="amp must be one of"):
        build(amp="fp8")
    with pytest.raises(ValueError, match="accumulation_steps"):
        build(accumulation_steps=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        build(checkpoint_every=5)
    with pytest.raises(TypeError, match="factory"):
        enc, det = make_encoder(), make_detector()
        build(encoder=enc, detector=det, optimizer=torch.optim.SGD(enc.parameters(), lr=1))
    with pytest.raises(TypeError, match="DataParallel"):
        build(encoder=nn.DataParallel(make_encoder()))


def test_positive_ratio_with_a_fully_frozen_encoder_is_refused():
    encoder = make_encoder().requires_grad_(False)
    with pytest.raises(ValueError, match=r"ratio > 0.*none of its parameters"):
        build(encoder=encoder, ratio=0.3)
    build(encoder=make_encoder().requires_grad_(False), ratio=0.0).fit(make_data(1), epochs=1)


def test_empty_data_and_missing_keys():
    with pytest.raises(ValueError, match="empty"):
        build().fit([], epochs=1)
    with pytest.raises(ValueError, match="needs 'segments'"):
        build(required_keys=["segments"]).fit(make_data(1), epochs=1)
    with pytest.raises(ValueError, match="no 'snippets'"):
        build().fit([{"video": torch.zeros(3, 2, 3)}], epochs=1)
    with pytest.raises(ValueError, match="no 'loss'"):
        build(detector_step=lambda f, b, i: {"total": f.sum()}).fit(make_data(1), epochs=1)


def test_detector_that_cuts_the_graph_is_reported_loudly():
    def step(feats, batch, info):
        with torch.no_grad():
            padded = feats.clone()
        return padded.sum() * 0 + feats.new_ones(()).requires_grad_()

    with pytest.raises(RuntimeError) as info:
        build(detector_step=step).fit(make_data(1), epochs=1)
    assert str(info.value) == NO_GRAD_FEATURES_MESSAGE
    assert "ActionFormer" in str(info.value) and "ratio=0" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "training.trainer",
        "training.checkpoint",
        "training.distributed",
        "training.metrics",
        "training.batches",
        "training.optimization",
        "training.callbacks",
        "training.adapters",
        "engine.base",
        "engine.rng",
        "training.steps",
        "engine.microbatch",
    ],
)
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"sgs_tad.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} doctest failures in sgs_tad.{name}"


# ------------------------------------------------------------- engines, context and policies


def test_accumulation_over_a_generator_averages_the_short_last_window():
    """The last window of an iterable without len (2 of 3 batches) is the mean over its own
    two batches, as plain backprop over the same window gives (it was divided by 3)."""
    data = make_data(5, lengths=(6,))
    capture = GradCapture()

    def frozen_sgd(enc, det):  # lr 0: the weights stay, so every window sees the same model
        return torch.optim.SGD([*enc.parameters(), *det.parameters()], lr=0.0)

    trainer = build(callbacks=[capture], accumulation_steps=3, optimizer=frozen_sgd)
    batches = ({"snippets": [d["snippets"]], "target": [d["target"]]} for d in data)
    trainer.fit(batches, epochs=1)
    assert trainer.step == 2 and len(capture.grads) == 2
    for window, items in ((0, data[:3]), (1, data[3:])):
        encoder, detector = make_encoder(), make_detector()
        reference_loss(encoder, detector, items).backward()
        for prefix, module in (("encoder", encoder), ("detector", detector)):
            for name, p in module.named_parameters():
                got = capture.grads[window][f"{prefix}.{name}"]
                torch.testing.assert_close(got, p.grad, msg=f"window {window} {prefix}.{name}")


def test_end_to_end_engine_trains_through_the_trainer_like_sgs_at_ratio_one():
    data = make_data(2, lengths=(5, 8))
    sgs_capture, e2e_capture = GradCapture(), GradCapture()
    build(callbacks=[sgs_capture], micro_batch_size=3).fit(
        data, epochs=1, batch_size=2, shuffle=False
    )
    detector = make_detector()
    trainer = SGSTrainer(EndToEnd(make_encoder()), detector, detector_step=masked_step(detector),
                         callbacks=[e2e_capture])  # fmt: skip
    trainer.fit(data, epochs=1, batch_size=2, shuffle=False)
    for name, grad in sgs_capture.grads[0].items():
        torch.testing.assert_close(e2e_capture.grads[0][name], grad, msg=name)


def test_step_info_has_mask_lengths_position_and_a_reproducible_generator():
    seen = []

    def step(feats, batch, info):
        seen.append((info.lengths, info.mask.sum(1).tolist(), info.step, info.epoch,
                     info.rank, torch.rand(2, generator=info.generator)))  # fmt: skip
        return feats.square().mean()

    build(detector_step=step, seed=3).fit(make_data(4, lengths=(5, 7)), epochs=1,
                                          batch_size=2, shuffle=False)  # fmt: skip
    again = []
    build(detector_step=lambda f, b, i: again.append(torch.rand(2, generator=i.generator))
          or f.square().mean(), seed=3).fit(make_data(4, lengths=(5, 7)), epochs=1,
                                            batch_size=2, shuffle=False)  # fmt: skip
    assert [s[:5] for s in seen] == [([5, 7], [5, 7], 0, 0, 0), ([5, 7], [5, 7], 1, 0, 0)]
    assert all(torch.equal(a[5], b) for a, b in zip(seen, again))
    assert not torch.equal(seen[0][5], seen[1][5])


def test_nonfinite_weights_after_a_step_raise_naming_the_parameter():
    def factory(enc, det):
        return torch.optim.SGD([*enc.parameters(), *det.parameters()], lr=float("inf"))

    trainer = build(optimizer=factory)
    with pytest.raises(FloatingPointError, match=r"step 0 made parameters non-finite: \['encoder"):
        trainer.fit(make_data(2), epochs=1)


def test_the_finiteness_check_names_culprits_and_lets_huge_finite_weights_pass():
    from sgs_tad.training.policies import check_finite_parameters

    big = nn.Parameter(torch.full((4,), 3e38))  # finite; its norm overflows to inf
    half = nn.Parameter(torch.ones(3, dtype=torch.float16))
    names = {id(big): "big", id(half): "half"}
    check_finite_parameters([big, half], names, step=4)  # no error
    with torch.no_grad():
        half[1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"step 4 made parameters non-finite: \['half'\]"):
        check_finite_parameters([big, half], names, step=4)


def test_a_run_whose_every_loss_is_nan_stops_with_an_error():
    trainer = build(detector_step=lambda f, b, i: f.sum() * float("nan"), max_consecutive_skips=3)
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row were skipped"):
        trainer.fit(make_data(5), epochs=1)
    assert trainer.skipped_steps == 3
    with pytest.raises(ValueError, match="max_consecutive_skips must be None or an int >= 1"):
        build(max_consecutive_skips=0)


class BadSource:
    """A source whose decoder fails on the first request, as a corrupt video does."""

    def __len__(self) -> int:
        return 5

    def get_snippets(self, indices: torch.Tensor) -> torch.Tensor:
        raise SnippetReadError("corrupt frames in bad.mp4", video_id="bad", path="bad.mp4")


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_an_unreadable_video_is_skipped_and_counted_or_raised(policy):
    data = make_data(3)
    data.insert(1, {"snippets": BadSource(), "target": torch.tensor(0.0)})
    trainer = build(on_bad_video=policy)
    if policy == "raise":
        with pytest.raises(SnippetReadError, match="bad.mp4"):
            trainer.fit(data, epochs=1, shuffle=False)
        return
    summary = trainer.fit(data, epochs=1, shuffle=False)
    assert [b["video_id"] for b in summary["bad_videos"]] == ["bad"]
    assert summary["bad_videos"][0]["path"] == "bad.mp4"
    assert trainer.step == 4 and summary["skipped_steps"] == 0


def test_a_detector_that_raises_floating_point_error_skips_the_step():
    """A detector may meet non-finite values before a loss exists (ETAD's RoI pooling of NaN
    boundaries): the step is skipped like a NaN loss, and too many in a row stop the run."""
    from sgs_tad import EndToEnd, SGSTrainer

    def step(feats, batch, info):
        raise FloatingPointError("non-finite boundaries")

    data = [{"snippets": torch.randn(3, 6)} for _ in range(4)]
    trainer = SGSTrainer(EndToEnd(nn.Linear(6, 4)), nn.Linear(4, 1), detector_step=step,
                         max_consecutive_skips=3)  # fmt: skip
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row were skipped"):
        trainer.fit(data, epochs=1)
    assert trainer.skipped_steps == 3
    raising = SGSTrainer(EndToEnd(nn.Linear(6, 4)), nn.Linear(4, 1), detector_step=step,
                         nonfinite="raise")  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite boundaries"):
        raising.fit(data, epochs=1)


def test_gradient_stats_report_pre_clip_norms_and_update_sizes(tmp_path):
    # Reference: the same first step without clipping gives the gradients before clipping.
    capture = GradCapture()
    build(callbacks=[capture]).fit(make_data(1), epochs=1)
    enc_norm = torch.linalg.vector_norm(
        torch.stack([g.norm() for k, g in capture.grads[0].items() if k.startswith("encoder")])
    )
    encoder = make_encoder()
    before = [p.detach().clone() for p in encoder.parameters()]
    stats = GradientStats({"encoder": encoder})
    trainer = build(
        encoder=encoder, callbacks=[stats], max_grad_norm=1e-3, log_dir=tmp_path, log_every=1
    )
    trainer.fit(make_data(1), epochs=1)
    after = list(encoder.parameters())
    moved = sum(float((a.detach() - b).square().sum()) for a, b in zip(after, before))
    size = sum(float(b.square().sum()) for b in before)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["grad_norm/encoder"] == pytest.approx(float(enc_norm), rel=1e-4)
    assert record["grad_norm/encoder"] > 1e-2  # so clipping (to 1e-3) was undone, not skipped
    assert record["update/encoder"] == pytest.approx((moved / size) ** 0.5, rel=1e-5)
    assert stats.summary() == {k: record[k] for k in ("grad_norm/encoder", "update/encoder")}
    with pytest.raises(ValueError, match="every must be >= 1"):
        GradientStats({"encoder": encoder}, every=0)
