"""Tests of sgs_tad.check_snippet_independence: independent encoders pass, mixers are named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgs_tad import SnippetMixingError, check_snippet_independence, freeze_norm_layers
from sgs_tad.encoders import build_encoder, freeze_encoder
from sgs_tad.engine.independence import IndependenceReport


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)  # module initialisation


def snippets(m: int = 4) -> torch.Tensor:
    return torch.randn(m, 3, 4, 12, 12, generator=torch.Generator().manual_seed(0))


class Conv3dStack(nn.Module):
    """Per-snippet 3D convolutions, optionally with a BatchNorm3d and a Dropout."""

    def __init__(self, *, bn: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1),
            nn.BatchNorm3d(8) if bn else nn.Identity(),
            nn.ReLU(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Conv3d(8, 8, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3, 4))


class BatchAxisConv(nn.Module):
    """A Conv1d run over the batch dimension: features [M, C] viewed as [1, C, M]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Conv3dStack()
        self.temporal = nn.Conv1d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.temporal(f.t().unsqueeze(0)).squeeze(0).t()


class TemporalAdapter(nn.Module):
    """AdaTAD-style adapter: pooled [M, C] -> [1, C, M], depthwise conv over M, added back."""

    def __init__(self, channels: int, hidden: int = 4) -> None:
        super().__init__()
        self.down = nn.Conv1d(channels, hidden, 1)
        self.dwconv = nn.Conv1d(hidden, hidden, 3, padding=1, groups=hidden)
        self.up = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, c = x.shape[:2]
        z = x.mean((2, 3, 4)).t().unsqueeze(0)  # [1, C, M]: the snippets become "time"
        z = self.up(nn.functional.gelu(self.dwconv(self.down(z))))
        return x + z.squeeze(0).t().reshape(m, c, 1, 1, 1)


class AdapterEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 8, 3, padding=1)
        self.adapter = TemporalAdapter(8)
        self.head = nn.Conv3d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.adapter(torch.relu(self.stem(x)))).mean((2, 3, 4))


class BatchMean(nn.Module):
    """Mixes in its own forward code: subtracts the batch mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).mean((2, 3, 4))
        return self.proj(f - f.mean(0, keepdim=True))


# ------------------------------------------------------------------------- independent


@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv3dStack(),
        lambda: freeze_encoder(build_encoder("small3d", widths=(8, 16, 32)), frozen_stages=-1),
        lambda: freeze_norm_layers(Conv3dStack(bn=True)),
        lambda: Conv3dStack(bn=True).eval(),
    ],
    ids=["conv3d-stack", "small3d-registry", "frozen-batchnorm", "eval-batchnorm"],
)
def test_independent_encoders_pass(make) -> None:
    encoder = make()
    report = check_snippet_independence(encoder, snippets(), raise_on_failure=True)
    assert report.independent
    assert report.num_snippets == 4
    assert report.max_rel_diff <= report.rtol
    assert report.suspects == () and report.message == ""


def test_train_mode_dropout_is_switched_off_for_the_check_and_restored() -> None:
    encoder = Conv3dStack(dropout=0.5).train()
    state = torch.random.get_rng_state()
    report = check_snippet_independence(encoder, snippets())
    assert report.independent
    assert report.disabled_dropout == ("body.3",)
    assert encoder.body[3].training  # back in training mode
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


def test_small3d_in_training_mode_is_independent() -> None:
    encoder = build_encoder("small3d", widths=(8, 16, 32)).train()  # GroupNorm: per snippet
    assert check_snippet_independence(encoder, snippets(3)).independent


def test_only_max_snippets_are_used() -> None:
    report = check_snippet_independence(Conv3dStack(), snippets(6), max_snippets=3)
    assert report.num_snippets == 3


# ---------------------------------------------------------------------------- mixing


def test_train_mode_batchnorm_is_named_and_its_statistics_restored() -> None:
    encoder = Conv3dStack(bn=True).train()
    bn = encoder.body[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    report = check_snippet_independence(encoder, snippets())
    assert not report.independent
    assert report.train_batchnorms == ("body.1",)
    assert report.mixing_modules == ("body.1",)
    assert report.suspects == ("body.1",)
    assert report.max_abs_diff > 0 and report.max_rel_diff > report.rtol
    assert "freeze_norm_layers" in report.message
    assert f"{report.max_abs_diff:.3g}" in report.message
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])


def test_conv1d_over_the_batch_dimension_is_named() -> None:
    report = check_snippet_independence(BatchAxisConv(), snippets())
    assert not report.independent
    assert report.mixing_modules == ("temporal",)
    assert report.batch_reshaped_modules == ("temporal",)
    assert report.train_batchnorms == ()
    assert "'temporal' (Conv1d)" in report.message
    assert "detector" in report.message


def test_adatad_style_temporal_adapter_is_named() -> None:
    report = check_snippet_independence(AdapterEncoder(), snippets())
    assert not report.independent
    assert report.mixing_modules == ("adapter.dwconv",)
    assert report.mixing_scopes == ("adapter",)
    assert report.suspects == ("adapter.dwconv",)
    assert set(report.batch_reshaped_modules) == {"adapter.down", "adapter.dwconv", "adapter.up"}
    assert "'adapter' (TemporalAdapter)" in report.message
    assert "move that temporal module out of the encoder into the detector" in report.message


def test_mixing_in_the_encoders_own_forward_blames_the_root() -> None:
    report = check_snippet_independence(BatchMean(), snippets())
    assert not report.independent
    assert report.mixing_modules == ("(root)",)


def test_raise_on_failure_raises_snippet_mixing_error_with_the_report() -> None:
    with pytest.raises(SnippetMixingError, match="'temporal'") as info:
        check_snippet_independence(BatchAxisConv(), snippets(), raise_on_failure=True)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.report, IndependenceReport)
    assert info.value.report.mixing_modules == ("temporal",)


def test_batchnorm1d_that_refuses_a_batch_of_one_is_reported() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 12 * 12, 6), nn.BatchNorm1d(6))
    report = check_snippet_independence(encoder.train(), snippets())
    assert not report.independent and report.train_batchnorms == ("2",)
    assert report.suspects[0] == "2"


def test_nondeterministic_encoder_is_not_blamed_on_mixing() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3 * 4 * 12 * 12, 4)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1  # state updated by forward: every call differs
            return self.lin(x.flatten(1)) + self.calls

    report = check_snippet_independence(Noisy(), snippets())
    assert not report.independent
    assert report.mixing_modules == ()
    assert report.nondeterministic_modules == ("(root)",)


# ---------------------------------------------------------------------------- inputs


def test_pool_maps_a_feature_map_to_features() -> None:
    encoder = nn.Conv3d(3, 4, 3)
    report = check_snippet_independence(encoder, snippets(), pool=lambda x: x.mean((2, 3, 4)))
    assert report.independent


def test_bad_inputs_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="at least 2 snippets"):
        check_snippet_independence(Conv3dStack(), snippets(1))
    with pytest.raises(TypeError, match="tensor"):
        check_snippet_independence(Conv3dStack(), [snippets()])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass pool="):
        check_snippet_independence(nn.Conv3d(3, 4, 3), snippets())
    with pytest.raises(ValueError, match="rtol"):
        check_snippet_independence(Conv3dStack(), snippets(), rtol=-1.0)
