"""The memory/time planner: predicted saved bytes against measured runs, recommend, the CLI.

Saved-for-backward bytes are deterministic, so predictions are checked against real runs of
the engines (``EndToEnd`` for naive, ``SequentializedGradientSampler`` for SGS) within
``TOLERANCE``. Times are machine- and load-dependent and are never asserted here; they are
compared in docs/plan.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from sgs_tad import EndToEnd, SequentializedGradientSampler
from sgs_tad.encoders import build_encoder
from sgs_tad.plan import (
    SavedBytesMeter,
    SnippetCost,
    main,
    measure_run,
    measure_snippet_cost,
    parse_bytes,
    predict,
    recommend,
)

#: Relative tolerance of predicted against measured saved-for-backward bytes.
TOLERANCE = 0.10
SHAPE = (3, 4, 32, 32)  # [C, L, H, W], the layout of sgs_tad.encoders


class PeakSaved:
    """Independent reference counter: peak live bytes saved for backward, storages once."""

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        counter = self

        class Holder:
            def __init__(self, t: torch.Tensor) -> None:
                self.t = t
                self.ptr = t.untyped_storage().data_ptr()
                if self.ptr in counter.excluded:
                    return
                if counter.refs.get(self.ptr, 0) == 0:
                    counter.live += t.untyped_storage().nbytes()
                    counter.peak = max(counter.peak, counter.live)
                counter.refs[self.ptr] = counter.refs.get(self.ptr, 0) + 1
                self.nbytes = t.untyped_storage().nbytes()

            def __del__(self) -> None:
                if self.ptr in counter.excluded:
                    return
                counter.refs[self.ptr] -= 1
                if counter.refs[self.ptr] == 0:
                    counter.live -= self.nbytes

        return torch.autograd.graph.saved_tensors_hooks(Holder, lambda h: h.t)


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder("small3d", widths=(8, 16, 32))


@pytest.fixture(scope="module")
def cost(encoder: nn.Module) -> SnippetCost:
    # Measured on micro-batches of 2; predictions below are for K = 4 and N = 16/32, so the
    # linear scaling of the model is checked too.
    return measure_snippet_cost(encoder, SHAPE, micro_batch_size=2, repeats=1)


def _run_saved(encoder: nn.Module, engine: Any, video: torch.Tensor) -> int:
    counter = PeakSaved([*encoder.parameters(), *encoder.buffers(), video])
    with counter.hooks():
        feats = engine.encode(video)
        feats.sum().backward()
        engine.backward(video, feats)
    encoder.zero_grad(set_to_none=True)
    return counter.peak


@pytest.mark.parametrize("n", [16, 32])
def test_naive_saved_bytes_match_prediction(encoder: nn.Module, cost: SnippetCost, n: int) -> None:
    video = torch.randn(1, n, *SHAPE)
    measured = _run_saved(encoder, EndToEnd(encoder), video)
    predicted = predict(cost, n=n, method="naive").saved_bytes
    assert predicted == pytest.approx(measured, rel=TOLERANCE)


@pytest.mark.parametrize("n", [16, 32])
@pytest.mark.parametrize(("k", "ratio"), [(4, 1.0), (4, 0.3), (8, 0.1)])
def test_sgs_saved_bytes_match_prediction(
    encoder: nn.Module, cost: SnippetCost, n: int, k: int, ratio: float
) -> None:
    video = torch.randn(1, n, *SHAPE)
    sgs = SequentializedGradientSampler(encoder, micro_batch_size=k, ratio=ratio)
    measured = _run_saved(encoder, sgs, video)
    predicted = predict(cost, n=n, k=k, ratio=ratio, method="sgs")
    assert predicted.saved_bytes == pytest.approx(measured, rel=TOLERANCE)
    # SGS keeps min(K, n_sampled) snippets' activations whatever N is.
    assert predicted.saved_bytes == pytest.approx(
        min(k, predicted.sampled) * cost.saved_bytes, rel=1e-9
    )


def test_measure_run_agrees_with_reference_counter(encoder: nn.Module, cost: SnippetCost) -> None:
    run = measure_run(encoder, SHAPE, n=16, method="sgs", k=4, ratio=0.5)
    assert run.saved_bytes == pytest.approx(4 * cost.saved_bytes, rel=TOLERANCE)
    naive = measure_run(encoder, SHAPE, n=16, method="naive")
    assert naive.saved_bytes == pytest.approx(16 * cost.saved_bytes, rel=TOLERANCE)


def test_cost_fields(encoder: nn.Module, cost: SnippetCost) -> None:
    params = sum(p.numel() * 4 for p in encoder.parameters())
    assert cost.input_bytes == 3 * 4 * 32 * 32 * 4
    assert cost.feature_bytes == 32 * 4
    assert cost.grad_bytes == params
    assert cost.optimizer_bytes == 2 * params  # AdamW: two states
    assert cost.fixed_bytes == cost.param_bytes + 3 * params
    assert cost.saved_bytes > cost.input_bytes  # at least the first conv's input
    assert 0 < cost.nograd_peak_bytes < cost.saved_bytes
    assert cost.train_peak_bytes is None  # CPU
    assert min(cost.fwd_nograd_s, cost.fwd_grad_s, cost.bwd_s) > 0


def test_measure_leaves_no_trace() -> None:
    torch.manual_seed(1)
    enc = nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.Dropout(0.5),
        nn.Flatten(2),
        nn.Linear(16, 8),
    )
    enc[0].weight.grad = torch.ones_like(enc[0].weight)
    running = enc[1].running_mean.clone()
    rng = torch.get_rng_state()
    cost = measure_snippet_cost(
        enc, (3, 2, 2, 4), micro_batch_size=3, repeats=1, pool=lambda x: x.mean(1)
    )
    assert torch.equal(enc[0].weight.grad, torch.ones_like(enc[0].weight))
    assert enc[4].weight.grad is None
    assert torch.equal(enc[1].running_mean, running)
    assert torch.equal(torch.get_rng_state(), rng)
    assert cost.feature_bytes == 8 * 4
    assert cost.optimizer_bytes == 2 * cost.grad_bytes


def test_measure_frozen_encoder_saves_nothing() -> None:
    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).requires_grad_(False)
    cost = measure_snippet_cost(enc, (3, 4), repeats=1)
    assert cost.saved_bytes == 0 and cost.grad_bytes == 0 and cost.optimizer_bytes == 0


def test_measure_errors() -> None:
    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with pytest.raises(ValueError, match="micro_batch_size must be an int >= 1, got 0"):
        measure_snippet_cost(enc, (3, 4), micro_batch_size=0)
    with pytest.raises(ValueError, match=r"snippet_shape .* got \(\)"):
        measure_snippet_cost(enc, ())
    with pytest.raises(ValueError, match=r"\[2, C\]; it returned \(2, 3, 4\)"):
        measure_snippet_cost(nn.Identity(), (3, 4))
    with pytest.raises(ValueError, match="encoder's parameters are on cpu"):
        measure_snippet_cost(enc, (3, 4), device="meta")


def _synthetic(**changes: Any) -> SnippetCost:
    base = SnippetCost(
        snippet_shape=(3, 8, 112, 112),
        micro_batch_size=2,
        device="cpu",
        input_bytes=1_000,
        feature_bytes=100,
        saved_bytes=100_000.0,
        nograd_peak_bytes=10_000.0,
        train_peak_bytes=None,
        fwd_nograd_s=0.01,
        fwd_grad_s=0.012,
        bwd_s=0.02,
        param_bytes=1_000_000,
        grad_bytes=1_000_000,
        optimizer_bytes=2_000_000,
    )
    return dataclasses.replace(base, **changes)


def test_predict_formulas() -> None:
    c = _synthetic()
    naive = predict(c, n=64, method="naive")
    assert naive.peak_bytes == 4_000_000 + 2 * 64 * 100 + 64 * 100_000 + 64 * 10_000
    assert naive.time_s == pytest.approx(64 * 0.032)
    ckpt = predict(c, n=64, k=4, method="checkpoint")
    assert ckpt.saved_bytes == 64 * 1_000 + 4 * 100_000
    assert ckpt.time_s == pytest.approx(64 * 0.042)
    sgs = predict(c, n=64, k=4, ratio=0.3, method="sgs")
    assert sgs.sampled == 20  # ceil(0.3 * 64)
    assert sgs.peak_bytes == 4_000_000 + 2 * 64 * 100 + 4 * 110_000
    assert sgs.time_s == pytest.approx(64 * 0.01 + 20 * 0.032)
    # K above N is capped; γ = 0 trains nothing and keeps only phase 1's workspace.
    assert predict(c, n=8, k=32, method="sgs").k == 8
    frozen = predict(c, n=64, k=4, ratio=0.0, method="sgs")
    assert frozen.saved_bytes == 0 and frozen.workspace_bytes == 4 * 10_000
    # On CUDA the measured training peak can raise the workspace.
    assert _synthetic(train_peak_bytes=150_000.0).workspace_bytes == 50_000


def test_predict_errors() -> None:
    c = _synthetic()
    with pytest.raises(ValueError, match="method must be one of"):
        predict(c, n=8, k=2, method="lazy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs k"):
        predict(c, n=8, method="sgs")
    with pytest.raises(ValueError, match="ratio must be a number in"):
        predict(c, n=8, k=2, ratio=1.5)
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        predict(c, n=0, k=2)


def test_recommend_largest_k_and_ratio() -> None:
    c = _synthetic()
    fixed = 4_000_000 + 2 * 128 * 100
    rec = recommend(c, n=128, budget_bytes=fixed + 10 * 110_000)
    assert rec.k == 10 and rec.ratio == 1.0 and not rec.naive_fits
    assert rec.prediction.peak_bytes <= rec.budget_bytes
    assert predict(c, n=128, k=11, method="sgs").peak_bytes > rec.budget_bytes
    # Time: N·t_fn + n·(t_fg + t_b) <= 3.0 s -> n = floor((3.0 - 1.28) / 0.032) = 53.
    rec = recommend(c, n=128, budget_bytes="1GB", time_budget_s=3.0)
    assert rec.k == 128 and rec.naive_fits
    assert rec.prediction.sampled == 53 and rec.ratio == pytest.approx(53 / 128)
    assert rec.prediction.time_s <= 3.0


def test_recommend_errors() -> None:
    c = _synthetic()
    with pytest.raises(ValueError, match=r"cannot fit SGS with one snippet.*97\.7 KiB saved"):
        recommend(c, n=16, budget_bytes=4_000_000)
    with pytest.raises(ValueError, match=r"time budget 0\.1 s cannot fit SGS at N=16"):
        recommend(c, n=16, budget_bytes="1GiB", time_budget_s=0.1)
    with pytest.raises(ValueError, match="cannot parse memory size"):
        recommend(c, n=16, budget_bytes="lots")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GB", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5G", 3 * 2**29),
        ("16 gb", 16 * 10**9),
        ("100", 100),
        ("64KiB", 65536),
        ("1e3B", 1000),
        (4096, 4096),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("16 gigs", ValueError, r"cannot parse memory size '16 gigs'.*'512MiB'"),
        ("", ValueError, "cannot parse memory size ''"),
        ("-1GB", ValueError, "cannot parse"),
        (-5, ValueError, "must be >= 0 bytes, got -5"),
        (1.5, TypeError, "got float 1.5"),
        (True, TypeError, "got bool"),
    ],
)
def test_parse_bytes_errors(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_bytes(value)


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--encoder", "small3d", "--snippet-shape", "3,4,16,16", "--n", "8,16", "--k", "2,4",
        "--ratio", "0.5,1.0", "--device", "cpu", "--budget", "1GB", "--time-budget", "100",
        "--micro-batch-size", "2", "--repeats", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| N | method | K | γ | saved MiB | peak MiB | time s | fits |" in out
    rows = [line for line in out.splitlines() if line.startswith("| 16 |")]
    assert len(rows) == 1 + 2 + 2 * 2  # naive, checkpoint per K, SGS per K and γ
    assert "- N=8: SGS with K=8, γ=1" in out and "- N=16: SGS with K=16, γ=1" in out


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--encoder", "small3d", "--snippet-shape", "3,4,16,16", "--n", "8"]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--budget", "lots"])
    assert exc.value.code == 2
    assert "cannot parse memory size 'lots'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--ratio", "0.3,2"])
    assert "ratios in [0, 1]" in capsys.readouterr().err


def test_saved_bytes_meter_counts_storages_once() -> None:
    x = torch.randn(256, requires_grad=True)
    with SavedBytesMeter() as meter:
        y = x.view(16, 16)
        z = (y * y).sum() + (x * x).sum()  # x's storage saved four times
    assert meter.peak == 256 * 4
    del z, y
    assert meter.live == 0
    w = torch.randn(256, requires_grad=True)
    with SavedBytesMeter(exclude=[w]) as meter:
        (w * w).sum()
    assert meter.peak == 0


def test_cli_verify_reports_an_out_of_memory_row(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """F20: a configuration that runs out of device memory is a row marked OOM, and the
    table goes on (it crashed the whole command before)."""
    import sgs_tad.plan.cli as cli

    real = cli.measure_run

    def measure_run(*args: Any, method: str, **kwargs: Any) -> Any:
        if method == "naive":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(*args, method=method, **kwargs)

    monkeypatch.setattr(cli, "measure_run", measure_run)
    argv = [
        "--encoder", "small3d", "--snippet-shape", "3,4,16,16", "--n", "8", "--k", "4",
        "--ratio", "1.0", "--device", "cpu", "--micro-batch-size", "2", "--repeats", "1",
        "--verify",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 8 |")]
    assert len(rows) == 3 and rows[0].endswith(" OOM | OOM |")
    assert "OOM" not in rows[1] and "OOM" not in rows[2]
