"""The determinism check's tolerance follows the precision used (issue 20, F3)."""

from __future__ import annotations

import pytest
import torch

from sgs_tad.engine.checks import DeterminismCheck, check_same, determinism_tolerance

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.fixture
def no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")


def test_tolerance_follows_dtype_and_autocast():
    assert determinism_tolerance(torch.float32, CPU) == (1e-4, 1e-5)
    assert determinism_tolerance(torch.float64, CPU) == (1e-8, 1e-10)
    for dtype in (torch.float16, torch.bfloat16):
        assert determinism_tolerance(dtype, CPU) == (1e-2, 1e-2)
    # an encoder that returns fp32 features computed under fp16/bf16 autocast
    assert determinism_tolerance(torch.float32, CPU, autocast=True) == (1e-2, 1e-2)


@pytest.mark.parametrize(
    "flag",
    [
        lambda mp: mp.setattr(torch.backends.cudnn, "allow_tf32", True),
        lambda mp: mp.setattr(torch.backends.cuda.matmul, "allow_tf32", True),
        lambda mp: mp.setattr(torch, "get_float32_matmul_precision", lambda: "high"),
    ],
    ids=["cudnn", "matmul", "matmul-precision"],
)
def test_tf32_on_cuda_loosens_fp32(monkeypatch, no_tf32, flag):
    assert determinism_tolerance(torch.float32, CUDA) == (1e-4, 1e-5)  # plain fp32 on CUDA
    flag(monkeypatch)
    assert determinism_tolerance(torch.float32, CUDA) == (1e-2, 1e-5)
    assert determinism_tolerance(torch.float32, CPU) == (1e-4, 1e-5)  # TF32 is CUDA's
    assert determinism_tolerance(torch.float64, CUDA) == (1e-8, 1e-10)


def test_tf32_sized_differences_pass_on_cuda_and_fail_on_plain_fp32(monkeypatch, no_tf32):
    a = torch.randn(4, 8) + 3
    b = a * (1 + 1e-3)  # what TF32 convolutions at two batch shapes give
    with pytest.raises(RuntimeError, match=r"determinism check failed.*rtol=0.0001"):
        check_same(b, a)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda t: CUDA))  # a fake CUDA tensor
    check = DeterminismCheck()
    check.add(b, a)
    check.raise_if_failed()


def test_check_accumulates_over_micro_batches_and_reads_once():
    a = torch.randn(3, 5)
    check = DeterminismCheck()
    check.add(a, a)
    check.add(a + 0.5, a)  # one bad micro-batch among good ones
    check.add(a, a)
    with pytest.raises(
        RuntimeError, match=r"differ from the phase-1 features by up to 0\.5.*BatchNorm"
    ):
        check.raise_if_failed()
    check.raise_if_failed()  # reset after reading
    nan = a.clone()
    nan[0, 0] = float("nan")
    check.add(nan, a)
    with pytest.raises(RuntimeError, match="determinism check failed"):
        check.raise_if_failed()
    with pytest.raises(
        RuntimeError, match=r"shape \(3, 4\) where the phase-1 features have \(3, 5\)"
    ):
        check_same(a[:, :4], a)
