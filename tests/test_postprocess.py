"""Post-processing: boundary selection, scores, soft-NMS, class fusion, seconds."""

from __future__ import annotations

import math

import pytest
import torch

from sgs_tad.detection.postprocess import (
    average_stages,
    boundary_mask,
    detections_from_proposals,
    fuse_class_scores,
    merge_window_detections,
    proposal_scores,
    segment_iou,
    select_by_boundaries,
    soft_nms,
    to_seconds,
)
from sgs_tad.evaluation import evaluate_detection, format_results


def test_boundary_mask_by_hand():
    # max 0.9 -> above 0.45: indices 4, 5. Strict peaks (zero padding): 0 (0.2 > 0, > 0.1)
    # and 4. Index 2 and 3 tie at 0.3, so neither is a strict peak.
    prob = torch.tensor([0.2, 0.1, 0.3, 0.3, 0.9, 0.5])
    assert boundary_mask(prob).tolist() == [True, False, False, False, True, True]
    assert boundary_mask(prob, ratio=1.0).tolist() == [True, False, False, False, True, False]
    batched = boundary_mask(torch.stack([prob, prob.flip(0)]))
    assert batched.shape == (2, 6)
    assert batched[1].tolist() == [True, True, False, False, False, True]


def test_select_by_boundaries_uses_snippet_index_and_forced_ends():
    t = 4
    start = torch.tensor([0.0, 0.0, 0.9, 0.0])  # starts: 0 (forced), 2
    end = torch.tensor([0.0, 0.8, 0.0, 0.0])  # ends: 1, 3 (forced)
    segments = torch.tensor(
        [
            [0.0, 0.3],  # snippets 0 -> 1: kept
            [0.5, 1.0],  # 2 -> 3 (1.0 * 4 clipped to 3): kept
            [0.25, 0.5],  # 1 -> 2: dropped
            [-0.1, 0.49],  # clipped to 0 -> 1: kept
        ]
    )
    assert select_by_boundaries(segments, start, end).tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="end_prob"):
        select_by_boundaries(segments, start, end[: t - 1])


def test_proposal_scores_and_stage_average():
    p = proposal_scores(
        torch.tensor([0.5, 1.0]), torch.tensor([0.4, 0.5]), torch.tensor([1.0, 0.2])
    )
    assert torch.allclose(p, torch.tensor([0.2, 0.1]))
    with pytest.raises(ValueError, match="iou_prob"):
        proposal_scores(torch.ones(2), torch.ones(2), torch.ones(3))
    stages = [torch.tensor([[0.0, 0.4]]), torch.tensor([[0.2, 0.6]]), torch.tensor([[0.1, 0.5]])]
    assert torch.allclose(average_stages(stages), torch.tensor([[0.1, 0.5]]))
    assert torch.equal(average_stages(torch.stack(stages)), average_stages(stages))
    with pytest.raises(ValueError, match=r"\[S, P, 2\]"):
        average_stages(torch.zeros(3, 2))


def test_segment_iou_by_hand():
    a = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    b = torch.tensor([[0.5, 1.5], [3.0, 4.0], [2.0, 2.0]])
    expected = torch.tensor([[1 / 3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(segment_iou(a, b), expected)


def test_soft_nms_by_hand():
    # Pick [0, 1] (0.9); [0.5, 1.5] overlaps it with IoU 1/3 -> 0.8 * exp(-(1/9) / 0.35);
    # [2, 3] does not overlap and keeps 0.7, so it is picked second.
    segments = torch.tensor([[0.0, 1.0], [0.5, 1.5], [2.0, 3.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    kept, kept_scores, index = soft_nms(segments, scores, sigma=0.35)
    decayed = 0.8 * math.exp(-(1 / 9) / 0.35)
    assert index.tolist() == [0, 2, 1]
    assert torch.allclose(kept_scores, torch.tensor([0.9, 0.7, decayed]))
    assert torch.equal(kept, segments[index])
    # An IoU threshold above 1/3 spares the second one; top_k truncates.
    _, kept_scores, index = soft_nms(segments, scores, iou_threshold=0.5, top_k=2)
    assert index.tolist() == [0, 1] and torch.allclose(kept_scores, torch.tensor([0.9, 0.8]))


def reference_soft_nms(segments, scores, sigma, iou_threshold, top_k):
    """Straightforward soft-NMS on Python floats: every pair handled one at a time."""
    segs = [tuple(s) for s in segments.double().tolist()]
    work = scores.double().tolist()
    alive = list(range(len(segs)))
    picked, picked_scores = [], []
    while alive and len(picked) < top_k:
        best = max(alive, key=lambda i: (work[i], -i))  # equal scores: lower index
        picked.append(best)
        picked_scores.append(work[best])
        alive.remove(best)
        s0, e0 = segs[best]
        for j in alive:
            s1, e1 = segs[j]
            inter = max(0.0, min(e0, e1) - max(s0, s1))
            union = (e0 - s0) + (e1 - s1) - inter
            iou = inter / union if union > 0 else 0.0
            if iou > iou_threshold:
                work[j] *= math.exp(-(iou**2) / sigma)
    return picked, picked_scores


@pytest.mark.parametrize("seed", range(5))
def test_soft_nms_equals_the_pairwise_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    start = torch.rand(n, generator=g, dtype=torch.float64)
    segments = torch.stack(
        [start, start + 0.3 * torch.rand(n, generator=g, dtype=torch.float64)], 1
    )
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    scores[::7] = 0.5  # equal scores
    sigma, threshold, top_k = [(0.35, 0.0, 100), (0.5, 0.3, 20), (0.1, 0.0, 45)][seed % 3]
    _, kept_scores, index = soft_nms(
        segments, scores, sigma=sigma, iou_threshold=threshold, top_k=top_k
    )
    picked, picked_scores = reference_soft_nms(segments, scores, sigma, threshold, top_k)
    assert index.tolist() == picked
    assert torch.allclose(kept_scores, torch.tensor(picked_scores, dtype=torch.float64))


def test_soft_nms_rejects_bad_options():
    segments, scores = torch.zeros(3, 2), torch.ones(3)
    for kwargs, match in [({"sigma": 0.0}, "sigma"), ({"top_k": 0}, "top_k")]:
        with pytest.raises(ValueError, match=match):
            soft_nms(segments, scores, **kwargs)
    with pytest.raises(ValueError, match="one score per segment"):
        soft_nms(segments, torch.ones(2))
    with pytest.raises(ValueError, match=r"\[P, 2\]"):
        soft_nms(torch.zeros(3, 3), scores)
    kept, kept_scores, index = soft_nms(torch.zeros(0, 2), torch.zeros(0))
    assert kept.shape == (0, 2) and kept_scores.shape == (0,) and index.shape == (0,)


def test_fuse_class_scores_keeps_top_two_classes():
    fused, classes = fuse_class_scores(torch.tensor([1.0, 0.5]), torch.tensor([0.1, 0.6, 0.3]))
    assert classes.tolist() == [1, 2]
    assert torch.allclose(fused, torch.tensor([[0.6, 0.3], [0.3, 0.15]]))
    with pytest.raises(ValueError, match="top_classes"):
        fuse_class_scores(torch.ones(2), torch.ones(3), top_classes=4)


def test_to_seconds_clips_and_offsets():
    segments = torch.tensor([[-0.1, 0.5], [0.25, 1.2]])
    assert to_seconds(segments, 40.0).tolist() == [[0.0, 20.0], [10.0, 40.0]]
    assert to_seconds(segments, 40.0, offset=100.0, clip=False).tolist() == [
        [96.0, 120.0],
        [110.0, 148.0],
    ]
    with pytest.raises(ValueError, match="duration"):
        to_seconds(segments, 0.0)


def test_detections_with_classes_are_activitynet_results():
    segments = torch.tensor([[0.0, 0.5], [0.6, 1.0]])
    scores = torch.tensor([0.5, 1.0])
    dets = detections_from_proposals(
        segments,
        scores,
        duration=10.0,
        class_scores=torch.tensor([0.2, 0.8, 0.0]),
        class_names=["a", "b", "c"],
    )
    # 2 proposals x top-2 classes, best first: 1.0 * 0.8, 0.5 * 0.8, 1.0 * 0.2, 0.5 * 0.2.
    assert [(d["label"], round(d["score"], 6), d["segment"]) for d in dets] == [
        ("b", 0.8, [6.0, 10.0]),
        ("b", 0.4, [0.0, 5.0]),
        ("a", 0.2, [6.0, 10.0]),
        ("a", 0.1, [0.0, 5.0]),
    ]
    assert all(isinstance(d["score"], float) for d in dets)
    with pytest.raises(ValueError, match="class_names"):
        detections_from_proposals(segments, scores, duration=10.0, class_scores=torch.ones(3))


def test_detections_evaluate_to_one_when_proposals_are_the_ground_truth():
    segments = torch.tensor([[0.1, 0.3], [0.5, 0.9]])
    dets = detections_from_proposals(segments, torch.tensor([0.9, 0.8]), duration=50.0)
    gt = {
        "database": {
            "v": {
                "subset": "validation",
                "annotations": [
                    {"segment": [5.0, 15.0], "label": "action"},
                    {"segment": [25.0, 45.0], "label": "action"},
                ],
            }
        }
    }
    assert evaluate_detection(gt, format_results({"v": dets})).average_mAP == 1.0


def test_merge_window_detections_puts_windows_in_video_time_and_suppresses_duplicates():
    # Two windows of 8 s, half a window apart (offsets 0 and 4 s). An action at 5-7 s lies in
    # both; another at 10-11 s only in the second one.
    first = detections_from_proposals(
        torch.tensor([[5 / 8, 7 / 8]]), torch.tensor([0.9]), duration=8.0, offset=0.0,
        label="hop",
    )  # fmt: skip
    second = detections_from_proposals(
        torch.tensor([[1 / 8, 3 / 8], [6 / 8, 7 / 8]]), torch.tensor([0.8, 0.7]),
        duration=8.0, offset=4.0, label="hop",
    )  # fmt: skip
    other = [{"segment": [5.0, 7.0], "score": 0.5, "label": "orbit"}]
    merged = merge_window_detections([first, second, other])
    got = [(d["label"], [round(x, 6) for x in d["segment"]], d["score"]) for d in merged]
    assert [g[:2] for g in got] == [
        ("hop", [5.0, 7.0]),
        ("hop", [10.0, 11.0]),
        ("orbit", [5.0, 7.0]),  # another label: not a duplicate
        ("hop", [5.0, 7.0]),  # the second window's copy, decayed
    ]
    assert got[0][2] == pytest.approx(0.9) and got[1][2] == pytest.approx(0.7)
    assert got[3][2] == pytest.approx(0.8 * math.exp(-1 / 0.35))
    # top_k counts over all labels; the duplicate goes first
    assert len(merge_window_detections([first, second, other], top_k=3)) == 3
    assert merge_window_detections([]) == []
    scores = evaluate_detection(
        {"database": {"v": {"subset": "validation", "annotations": [
            {"segment": [5.0, 7.0], "label": "hop"}, {"segment": [10.0, 11.0], "label": "hop"}]}}},
        format_results({"v": [d for d in merged if d["label"] == "hop"]}),
        tiou_thresholds=(0.5,),
    )  # fmt: skip
    assert scores.mAP[0.5] == pytest.approx(1.0)


def test_merge_window_detections_rejects_bad_input():
    with pytest.raises(ValueError, match="window 0, detection 0.*needs 'segment', 'score'"):
        merge_window_detections([[{"segment": [0.0, 1.0], "score": 1.0}]])
    with pytest.raises(ValueError, match="top_k=0 must be a positive int"):
        merge_window_detections([], top_k=0)
