"""Tests for examples/etad/roi.py and examples/etad/targets.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from etad.roi import boundary_windows, extend_segments, roi_interpolate
from etad.targets import (
    assign_ground_truth,
    boundary_labels,
    decode_offsets,
    encode_offsets,
    segment_iou,
)


def _interpolant(f: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reference: the documented sequence at snippet-centre positions ``u``, ``[C, len(u)]``."""
    t = f.shape[1]
    inside = (u >= -0.5) & (u <= t - 0.5)
    x = u.clamp(0, t - 1)
    lo = x.floor().long().clamp(max=t - 1)
    hi = (lo + 1).clamp(max=t - 1)
    w = x - lo
    return (f[:, lo] * (1 - w) + f[:, hi] * w) * inside


def _loop_reference(features, segments, batch_index, num_bins, samples=4000):
    """Average of many point samples per bin, one proposal and one bin at a time."""
    _, c, t = features.shape
    out = torch.zeros(len(segments), c, num_bins, dtype=torch.float64)
    for r in range(len(segments)):
        f = features[batch_index[r]].double()
        s, e = (float(v) * t - 0.5 for v in segments[r])
        for j in range(num_bins):
            a = s + (e - s) * j / num_bins
            b = s + (e - s) * (j + 1) / num_bins
            mids = a + (b - a) * (torch.arange(samples, dtype=torch.float64) + 0.5) / samples
            out[r, :, j] = _interpolant(f, mids).mean(dim=1)
    return out


def test_roi_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 12, generator=g)
    # inside, partly outside the video, longer than the video, reversed, and tiny
    segments = torch.tensor(
        [[0.1, 0.4], [-0.3, 0.2], [0.8, 1.3], [-0.5, 1.5], [0.7, 0.2], [0.5, 0.52], [0.0, 1.0]]
    )
    batch_index = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    for bins in (1, 4, 7):
        got = roi_interpolate(features, segments, batch_index, bins)
        ref = _loop_reference(features, segments, batch_index, bins)
        assert got.shape == (7, bins, 5)
        torch.testing.assert_close(got.transpose(1, 2).double(), ref, atol=2e-4, rtol=0)


def test_roi_zero_width_bin_is_the_point_value():
    features = torch.arange(6.0).view(1, 1, 6)
    # a zero-length segment at snippet-centre position 2.25: the interpolant is 2.25 there
    x = (2.25 + 0.5) / 6
    got = roi_interpolate(features, torch.tensor([[x, x]]), torch.tensor([0]), 3)
    torch.testing.assert_close(got, torch.full((1, 3, 1), 2.25))


def test_roi_unsorted_batch_index_and_gradient():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3, 10, generator=g, requires_grad=True)
    segments = torch.tensor([[0.1, 0.5], [0.2, 0.9], [0.0, 0.3]], requires_grad=True)
    batch_index = torch.tensor([1, 0, 1])
    out = roi_interpolate(features, segments, batch_index, 4)
    for r in range(3):
        single = roi_interpolate(features, segments[r : r + 1], batch_index[r : r + 1], 4)
        torch.testing.assert_close(out[r : r + 1], single)
    out.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert segments.grad is None  # the boxes are not differentiated


def test_roi_rejects_bad_input():
    f = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        roi_interpolate(f[0], torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="batch_index must lie"):
        roi_interpolate(f, torch.zeros(1, 2), torch.tensor([2]), 2)
    with pytest.raises(ValueError, match="num_bins"):
        roi_interpolate(f, torch.zeros(1, 2), torch.tensor([0]), 0)


def test_extend_and_boundary_windows():
    seg = torch.tensor([[0.2, 0.6]])
    torch.testing.assert_close(extend_segments(seg, 0.5), torch.tensor([[0.0, 0.8]]))
    start, end = boundary_windows(seg, 0.25)
    torch.testing.assert_close(start, torch.tensor([[0.1, 0.3]]))
    torch.testing.assert_close(end, torch.tensor([[0.5, 0.7]]))


def test_segment_iou_and_assignment():
    boxes = torch.tensor([[0.0, 0.5], [0.4, 0.6], [0.6, 0.5]])
    gts = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    iou = segment_iou(boxes, gts)
    expected = torch.tensor([[0.5, 0.0], [0.0, 0.1 / 0.6], [0.0, 0.0]])
    torch.testing.assert_close(iou, expected)
    matched, best = assign_ground_truth(boxes[:2], gts)
    torch.testing.assert_close(matched, gts)
    torch.testing.assert_close(best, torch.tensor([0.5, 0.1 / 0.6]))


def test_boundary_labels_bmn_regions():
    t = 10
    start, end = boundary_labels(torch.tensor([[0.3, 0.75]]), t)
    # start region [0.15, 0.45]: snippets 1 (half covered) .. 4 (half covered)
    torch.testing.assert_close(start, torch.tensor([0, 0.5, 1, 1, 0.5, 0, 0, 0, 0, 0.0]))
    # end region [0.6, 0.9]: snippets 6, 7, 8 fully
    torch.testing.assert_close(end, torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 0.0]))
    empty_s, empty_e = boundary_labels(torch.zeros(0, 2), t)
    assert empty_s.sum() == 0 and empty_e.sum() == 0


def test_perfect_offsets_reconstruct_ground_truth():
    g = torch.Generator().manual_seed(2)
    s = torch.rand(64, generator=g) * 0.8
    boxes = torch.stack((s, s + 0.05 + torch.rand(64, generator=g) * 0.2), dim=1)
    gs = torch.rand(64, generator=g) * 0.8
    gts = torch.stack((gs, gs + 0.01 + torch.rand(64, generator=g) * 0.2), dim=1)
    offsets = encode_offsets(boxes, gts)
    torch.testing.assert_close(decode_offsets(boxes, offsets), gts, atol=1e-6, rtol=0)
    # the refinement is the mean of the two parametrisations: a wrong centre/width half moves
    # the result halfway towards the centre/width box
    wrong = offsets.clone()
    wrong[:, 2:] = torch.tensor([0.1, 0.2])
    length = boxes[:, 1] - boxes[:, 0]
    centre = boxes.mean(dim=1) + 0.1 * length
    half = 0.5 * length * torch.exp(torch.tensor(0.2))
    cw_box = torch.stack((centre - half, centre + half), dim=1)
    torch.testing.assert_close(decode_offsets(boxes, wrong), 0.5 * (gts + cw_box))
    torch.testing.assert_close(
        decode_offsets(boxes, torch.zeros_like(offsets)), boxes, atol=1e-7, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_under_autocast_keeps_positions_in_fp32(dtype):
    """F16: under autocast the detector's features are half precision; the bin weights must
    still come from fp32 positions (only the finished weights are rounded). Cast to the
    features' dtype, positions were quantised to T * 2^-11 (fp16) or T * 2^-8 (bf16)
    snippets, and bf16 even rounded the clamp to T - 0.5 up to T (an index error)."""
    torch.manual_seed(0)
    t = 200
    features = torch.randn(2, 16, t)
    segments = torch.rand(50, 2).sort(dim=1).values
    owner = torch.randint(0, 2, (50,))
    exact = roi_interpolate(features.double(), segments.double(), owner, 8).float()
    # The floor: the features themselves rounded to `dtype`, everything else exact.
    rounded = roi_interpolate(features.to(dtype).float(), segments, owner, 8)
    floor = (rounded - exact).abs().max().item()
    with torch.autocast("cpu", dtype=dtype):
        out = roi_interpolate(features.to(dtype), segments, owner, 8)
    assert out.dtype == dtype
    error = (out.float() - exact).abs().max().item()
    assert error <= 5 * floor, (error, floor)
