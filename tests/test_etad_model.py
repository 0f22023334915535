"""Tests for the ETAD detector in examples/etad (config, modules, model)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import get_args

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from etad import ETAD, ETADConfig, ETADPrediction, to_detections
from etad.config import ProposalStrategy
from etad.modules import StageOutput
from etad.targets import encode_offsets
from sgs_tad.detection.proposals import PROPOSAL_STRATEGIES, ProposalMap, sample_proposals

T = 16


def _tiny(**changes) -> ETADConfig:
    sizes = dict(in_channels=32, temporal_scale=T, max_duration=T)
    sizes.update(changes)
    return ETADConfig.small(**sizes)


def _batch(b: int = 2, c: int = 32, t: int = T, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, c, t, generator=g)
    # boundaries on the snippet grid, so some proposals match a ground truth exactly
    gts = [torch.tensor([[4 / t, 10 / t]]), torch.tensor([[0.0, 3 / t], [8 / t, 1.0]])][:b]
    return feats, gts


# ---------------------------------------------------------------- parameter count, by hand
def _conv(cin, cout, k, groups=1, bias=True):
    return cout * (cin // groups) * k + (cout if bias else 0)


def _gn(c):
    return 2 * c  # weight and bias


def _lstm(i, h):
    return 4 * (i * h + h * h + 2 * h)  # four gates: W_ih, W_hh, b_ih, b_hh


def _linear(i, o):
    return i * o + o


def _mlp(dims):
    return sum(_linear(a, b) for a, b in zip(dims, dims[1:]))


def _expected_params(cfg: ETADConfig) -> int:
    c, h, br, g = cfg.channels, cfg.lstm_hidden, cfg.branch_channels, cfg.conv_groups
    enhance = (
        _conv(cfg.in_channels, c, 3, g, bias=False) + _gn(c)  # stem
        + 2 * _lstm(c, h)  # forward and backward LSTM
        + 2 * (_conv(h, br, 3, g, bias=False) + _gn(br))  # conv after each LSTM
        + _conv(c, c, 3, g, bias=False) + _gn(c)  # residual path
        + _conv(2 * br + c, c, 1, g, bias=False) + _gn(c)  # fusion of the concatenation
    )  # fmt: skip
    boundary = _conv(c, c, 3, g) + _conv(c, 2, 1)
    rc, mid, tail = cfg.roi_channels, cfg.mid_dim, [cfg.fc_dim] * cfg.fc_layers
    stage = _conv(c, c, 3, g) + _conv(c, rc, 3)  # adaptation + reduction to roi_channels
    stage += 2 * _mlp([rc * cfg.boundary_bins, mid, *tail, 1])  # start and end offsets
    ext = rc * cfg.extended_bins
    if cfg.share_extended_fc:  # one first layer, three heads (centre/width, IoU, start/end cls)
        stage += _linear(ext, mid) + 3 * _mlp([mid, *tail, 2])
    else:
        stage += 3 * _mlp([ext, mid, *tail, 2])
    return enhance + boundary + cfg.num_stages * stage


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "cfg",
    [
        ETADConfig(),
        ETADConfig(share_extended_fc=False, in_channels=512),
        ETADConfig.small(),
        _tiny(fc_layers=0, stage_iou_thresholds=(0.5, 0.7)),
    ],
    ids=["paper", "paper-unshared", "small", "tiny"],
)
def test_parameter_count_matches_hand_computation(cfg):
    assert _count(ETAD(cfg)) == _expected_params(cfg)


def test_paper_parameter_count_value():
    # the paper's sizes with 2048-channel (TSM-R50) input, added up by hand: feature module
    # 1,645,056 (of which the two LSTMs 1,052,672), boundary head 49,922, each cascade stage
    # 3,789,576 (of which the shared 4096 -> 512 layer 2,097,664)
    assert _expected_params(ETADConfig()) == 1_645_056 + 49_922 + 3 * 3_789_576 == 13_063_706


# ---------------------------------------------------------------- training forward
def _shrink_offset_heads(model: ETAD, factor: float = 0.01) -> None:
    """Make the refinement small, so exact-match proposals stay positive in every stage."""
    with torch.no_grad():
        for stage in model.stages:
            for head in (stage.start_head, stage.end_head, stage.centre_width_head):
                head[-1].weight.mul_(factor)


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = ETAD(_tiny(aps_ratio=1.0))
    _shrink_offset_heads(model)
    feats, gts = _batch()
    out = model(feats, gts, generator=torch.Generator().manual_seed(0))
    for i in range(1, 4):  # positives at every stage, so the offset heads are trained
        assert out[f"stage{i}_offset"] > 0
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_loss_dict_keys_and_total():
    model = ETAD(_tiny())
    feats, gts = _batch()
    out = model(feats, gts, generator=torch.Generator().manual_seed(0))
    stages = [f"stage{i}" for i in (1, 2, 3)]
    parts = ("boundary", "iou_cls", "iou_reg", "offset")
    expected = {"loss", "boundary", *stages, *(f"{s}_{p}" for s in stages for p in parts)}
    assert set(out) == expected
    torch.testing.assert_close(out["loss"].detach(), out["boundary"] + sum(out[s] for s in stages))
    assert out["loss"].requires_grad and not out["boundary"].requires_grad


def test_refinement_does_not_backpropagate_through_boxes():
    # stage 1's start/end offset heads only feed stage 1's offset loss and the refined boxes.
    # Adding a second stage must leave their gradient unchanged iff the boxes are detached.
    torch.manual_seed(0)
    two = ETAD(_tiny(aps_ratio=1.0, stage_iou_thresholds=(0.5, 0.6)))
    one = ETAD(_tiny(aps_ratio=1.0, stage_iou_thresholds=(0.5,)))
    one.load_state_dict(two.state_dict(), strict=False)
    feats, gts = _batch()
    grads = []
    for model in (one, two):
        model(feats, gts, generator=torch.Generator().manual_seed(1))["loss"].backward()
        head = model.stages[0].start_head
        grads.append(torch.cat([p.grad.flatten() for p in head.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_reproducible_with_generator_and_global_rng_untouched():
    model = ETAD(_tiny())
    feats, gts = _batch()
    state = torch.get_rng_state()
    a = model(feats, gts, generator=torch.Generator().manual_seed(3))["loss"]
    b = model(feats, gts, generator=torch.Generator().manual_seed(3))["loss"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", ["grid", "block", "iou_balanced", "scale_balanced", "fps"])
def test_aps_strategy_by_name(strategy):
    model = ETAD(_tiny(aps_strategy=strategy, aps_ratio=0.2))
    feats, gts = _batch()
    out = model(feats, gts, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])


def test_video_without_ground_truth():
    model = ETAD(_tiny())
    feats, _ = _batch()
    gts = [torch.zeros(0, 2), torch.tensor([[0.25, 0.5]])]
    out = model(feats, gts, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()


def test_detector_trains_on_random_features_with_aps():
    torch.manual_seed(0)
    cfg = _tiny(temporal_scale=32, max_duration=32, aps_ratio=0.1)
    model = ETAD(cfg)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 32, 32, generator=g)
    gts = [torch.sort(torch.rand(1, 2, generator=g), dim=1).values for _ in range(4)]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        out = model(feats, gts, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, losses  # about 0.2 on the seeds tried


def test_with_sgs_at_ratio_one_matches_end_to_end():
    # the detector as SGS's loss: [B, N, C] features transposed to [B, C, T]
    from sgs_tad.engine.sgs import SequentializedGradientSampler

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 32))
    model = ETAD(_tiny())
    snippets = torch.randn(2, T, 3, 4, generator=torch.Generator().manual_seed(0))
    _, gts = _batch()

    feats = encoder(snippets.flatten(0, 1)).view(2, T, 32)
    model(feats.transpose(1, 2), gts, generator=torch.Generator().manual_seed(5))[
        "loss"
    ].backward()
    reference = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()

    sgs = SequentializedGradientSampler(encoder, micro_batch_size=4, ratio=1.0)
    feats = sgs.encode(snippets)
    model(feats.transpose(1, 2), gts, generator=torch.Generator().manual_seed(5))[
        "loss"
    ].backward()
    sgs.backward(snippets, feats)
    for got, ref in zip((p.grad for p in encoder.parameters()), reference):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- inference
def test_predict_shapes_and_ranges():
    cfg = _tiny(max_duration=8)
    model = ETAD(cfg).eval()
    feats = torch.randn(3, 32, T, generator=torch.Generator().manual_seed(1))
    preds = model.predict(feats)
    p = ProposalMap(T, 8).num_proposals
    assert len(preds) == 3
    for pred in preds:
        assert pred.segments.shape == (p, 2) and pred.proposals.shape == (p, 2)
        assert pred.start.shape == (T,) and pred.end.shape == (T,)
        assert pred.iou_cls.shape == (p,) and pred.iou_reg.shape == (p,)
        for v in (pred.start, pred.end, pred.iou_score):
            assert bool(((v >= 0) & (v <= 1)).all())
        assert not pred.segments.requires_grad


def test_predict_chunking_does_not_change_results():
    whole = ETAD(_tiny()).eval()
    chunked = ETAD(_tiny(inference_chunk=7)).eval()
    chunked.load_state_dict(whole.state_dict())
    feats, _ = _batch()
    for a, b in zip(whole.predict(feats), chunked.predict(feats)):
        torch.testing.assert_close(a.segments, b.segments)
        torch.testing.assert_close(a.iou_cls, b.iou_cls)


def test_predict_with_grid_aps():
    model = ETAD(_tiny(inference_aps_ratio=0.2)).eval()
    feats, _ = _batch()
    expected = sample_proposals(ProposalMap(T, T), 0.2, "grid").numel()
    assert model.predict(feats)[0].segments.shape == (expected, 2)
    assert (
        model.predict(feats, aps_ratio=None)[0].segments.shape[0]
        == ProposalMap(T, T).num_proposals
    )


def test_perfect_offsets_give_ground_truth_through_the_cascade():
    model = ETAD(_tiny()).eval()
    feats, _ = _batch()
    gt = torch.tensor([0.25, 0.625])

    def perfect(features, segments, batch_index):
        offsets = encode_offsets(segments, gt.expand_as(segments))
        zeros = segments.new_zeros(len(segments), 2)
        return StageOutput(offsets, zeros, zeros)

    def still(features, segments, batch_index):
        zeros = segments.new_zeros(len(segments), 2)
        return StageOutput(segments.new_zeros(len(segments), 4), zeros, zeros)

    model.stages[0].evaluate = perfect
    model.stages[1].evaluate = still
    model.stages[2].evaluate = perfect
    for pred in model.predict(feats):
        torch.testing.assert_close(pred.segments, gt.expand_as(pred.segments), atol=1e-5, rtol=0)
        torch.testing.assert_close(pred.iou_cls, torch.full_like(pred.iou_cls, 0.5))


def test_to_detections_scores_and_boundary_selection():
    start = torch.tensor([0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    end = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.3])
    segments = torch.tensor([[0.0, 0.5], [0.0, 1.0], [0.5, 1.0]])
    pred = ETADPrediction(
        segments=segments,
        proposals=segments,
        start=start,
        end=end,
        iou_cls=torch.tensor([0.5, 1.0, 1.0]),
        iou_reg=torch.tensor([0.8, 0.5, 1.0]),
    )
    dets = to_detections(pred, duration=20.0)
    # the third box starts at snippet 4, not a start candidate; scores p_s * p_e * p_iou:
    # [0, 0.5] -> 0.9 * 0.8 * 0.4 = 0.288, [0, 1] -> 0.9 * 0.3 * 0.5 = 0.135 (before soft-NMS
    # decays the second by exp(-0.5^2 / 0.35))
    assert [d["segment"] for d in dets] == [[0.0, 10.0], [0.0, 20.0]]
    assert dets[0]["score"] == pytest.approx(0.288)
    assert dets[1]["score"] == pytest.approx(0.135 * math.exp(-0.25 / 0.35))
    assert {d["label"] for d in dets} == {"action"}


# ---------------------------------------------------------------- input checks
def test_bad_input_is_explained():
    model = ETAD(_tiny())
    feats, gts = _batch()
    with pytest.raises(ValueError, match=r"transpose\(1, 2\)"):
        model(feats.transpose(1, 2), gts)
    with pytest.raises(ValueError, match="one \\[G, 2\\] tensor per video"):
        model(feats, gts[:1])
    with pytest.raises(ValueError, match=r"gt_segments\[1\]"):
        model(feats, [gts[0], torch.zeros(3)])
    with pytest.raises(ValueError, match="max_duration"):
        ETADConfig.small(temporal_scale=8, max_duration=9)
    with pytest.raises(ValueError, match="conv_groups"):
        ETADConfig.small(channels=66)
    with pytest.raises(ValueError, match="aps_ratio"):
        ETADConfig.small(aps_ratio=0.0)
    with pytest.raises(ValueError, match="iou_balanced"):  # the message lists the known names
        ETADConfig.small(aps_strategy="dense")
    with pytest.raises(ValueError, match="divide by the video duration"):
        model(feats, [gts[0], torch.tensor([[12.0, 30.5]])])  # seconds, not normalised
    with pytest.raises(ValueError, match="not normalised"):
        model(feats, [gts[0], torch.tensor([[0.5, 0.2]])])


def test_strategy_names_match_the_library():
    assert set(get_args(ProposalStrategy)) == set(PROPOSAL_STRATEGIES)


def test_to_detections_moves_a_device_prediction_to_the_cpu_once(monkeypatch):
    """Issue 20, F1: the prediction on the device (meta stands for CUDA here) and the class
    scores on the CPU; post-processing runs on the CPU after one move per video."""
    start = torch.tensor([0.9, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.3])
    segments = torch.tensor([[0.0, 0.5], [0.0, 1.0]])
    fields = {"segments": segments, "proposals": segments, "start": start,
              "end": start.flip(0), "iou_cls": torch.tensor([0.5, 1.0]),
              "iou_reg": torch.tensor([0.8, 0.5])}  # fmt: skip
    on_cpu = ETADPrediction(**fields)
    on_device = ETADPrediction(**{k: v.to("meta") for k, v in fields.items()})
    moves = []

    def to(self, device):
        moves.append(torch.device(device))
        return on_cpu  # a meta tensor cannot be copied: hand over the CPU twin

    monkeypatch.setattr(ETADPrediction, "to", to, raising=False)
    dets = to_detections(on_device, duration=20.0, class_scores=torch.tensor([0.7, 0.3]),
                         class_names=["a", "b"])  # fmt: skip
    assert moves == [torch.device("cpu")]
    assert dets and {d["label"] for d in dets} <= {"a", "b"}
    expected = to_detections(on_cpu, duration=20.0, class_scores=torch.tensor([0.7, 0.3]),
                             class_names=["a", "b"])  # fmt: skip
    assert dets == expected
