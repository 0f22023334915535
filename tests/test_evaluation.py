"""ActivityNet-protocol detection mAP: hand-computed cases, input checks, CLI.

The agreement with the official ActivityNet code itself was checked outside the test suite
(the official code needs pandas and may not be redistributed here); see docs/evaluation.md.
Here a plain loop written from the protocol's description checks the vectorised matching.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from sgs_tad.evaluation import (
    ACTIVITYNET_TIOU_THRESHOLDS,
    THUMOS_TIOU_THRESHOLDS,
    EvaluationWarning,
    evaluate_detection,
    format_results,
    interpolated_average_precision,
)
from sgs_tad.evaluation.__main__ import main


def make_gt(videos, subset="validation"):
    """videos: {video: [(start, end, label), ...]}."""
    return {
        "database": {
            v: {
                "subset": subset,
                "annotations": [{"segment": [s, e], "label": lab} for s, e, lab in anns],
            }
            for v, anns in videos.items()
        }
    }


def make_pred(videos):
    """videos: {video: [(start, end, label, score), ...]}."""
    return {
        "results": {
            v: [{"segment": [s, e], "label": lab, "score": sc} for s, e, lab, sc in dets]
            for v, dets in videos.items()
        }
    }


# --- hand-computed cases -----------------------------------------------------------------


def test_perfect_detection_scores_one():
    gt = make_gt({"v": [(0.0, 10.0, "a"), (20.0, 30.0, "a")]})
    pred = make_pred({"v": [(0.0, 10.0, "a", 0.9), (20.0, 30.0, "a", 0.8)]})
    result = evaluate_detection(gt, pred)
    assert result.average_mAP == 1.0
    assert list(result.mAP) == list(ACTIVITYNET_TIOU_THRESHOLDS)
    assert result.num_ground_truth == 2 and result.num_predictions == 2


def test_duplicate_detection_is_a_false_positive():
    # Ranked: [0,10] TP, [0,10] again FP (its GT is taken), [20,30] TP.
    # precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # Interpolated: recall 0 -> 1/2 at precision max(1, 1/2, 2/3) = 1; 1/2 -> 1 at 2/3.
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6 at every threshold.
    gt = make_gt({"v": [(0.0, 10.0, "a"), (20.0, 30.0, "a")]})
    pred = make_pred({"v": [(0.0, 10.0, "a", 0.9), (0.0, 10.0, "a", 0.8), (20.0, 30.0, "a", 0.7)]})
    result = evaluate_detection(gt, pred)
    assert result.average_mAP == pytest.approx(5 / 6, abs=1e-12)


def test_lower_score_duplicate_comes_second_whatever_the_file_order():
    # Same as above with the file order shuffled: ranking is by score only.
    gt = make_gt({"v": [(0.0, 10.0, "a"), (20.0, 30.0, "a")]})
    pred = make_pred({"v": [(20.0, 30.0, "a", 0.7), (0.0, 10.0, "a", 0.8), (0.0, 10.0, "a", 0.9)]})
    assert evaluate_detection(gt, pred).average_mAP == pytest.approx(5 / 6, abs=1e-12)


def test_tiou_thresholds_count_separately():
    # tIoU([0, 7.9], [0, 10]) = 0.79: a hit at 0.5 ... 0.75 (6 thresholds), a miss at
    # 0.8 ... 0.95 (4): average mAP = 6 / 10.
    gt = make_gt({"v": [(0.0, 10.0, "a")]})
    pred = make_pred({"v": [(0.0, 7.9, "a", 1.0)]})
    result = evaluate_detection(gt, pred)
    assert [result.mAP[t] for t in ACTIVITYNET_TIOU_THRESHOLDS] == [1.0] * 6 + [0.0] * 4
    assert result.average_mAP == pytest.approx(0.6, abs=1e-12)


def test_prediction_takes_the_highest_tiou_free_ground_truth():
    # GT a = [0, 10], b = [5, 15]. First prediction [4, 14]: tIoU 6/14 = 0.43 with a,
    # 9/11 = 0.82 with b -> takes b. Second prediction [0, 10] then takes a: AP 1.
    # (Taking the first ground truth above the threshold instead would give a the first
    # prediction and leave the second with b at tIoU 1/3 < 0.4: AP 0.5.)
    gt = make_gt({"v": [(0.0, 10.0, "x"), (5.0, 15.0, "x")]})
    pred = make_pred({"v": [(4.0, 14.0, "x", 0.9), (0.0, 10.0, "x", 0.8)]})
    result = evaluate_detection(gt, pred, tiou_thresholds=[0.4])
    assert result.average_mAP == 1.0


def test_mean_over_classes_counts_a_class_without_predictions_as_zero():
    gt = make_gt({"v": [(0.0, 10.0, "a"), (20.0, 30.0, "b")]})
    pred = make_pred({"v": [(0.0, 10.0, "a", 0.9)]})
    result = evaluate_detection(gt, pred, tiou_thresholds=[0.5])
    assert result.ap_per_class == {"a": (1.0,), "b": (0.0,)}
    assert result.mAP == {0.5: 0.5}


def test_detection_in_another_video_is_a_false_positive():
    # Ranked: v2's [0, 10] (no GT there) FP, v1's TP. precision 0, 1/2; recall 0, 1.
    # AP = (1 - 0) * max(precision at recall >= 1) = 1/2.
    gt = make_gt({"v1": [(0.0, 10.0, "a")], "v2": []})
    pred = make_pred({"v1": [(0.0, 10.0, "a", 0.5)], "v2": [(0.0, 10.0, "a", 0.9)]})
    assert evaluate_detection(gt, pred).average_mAP == pytest.approx(0.5, abs=1e-12)


def test_videos_of_other_subsets_are_not_ground_truth():
    gt = make_gt({"v1": [(0.0, 10.0, "a")]})
    gt["database"]["t1"] = {
        "subset": "training",
        "annotations": [{"segment": [0.0, 5.0], "label": "a"}],
    }
    pred = make_pred({"v1": [(0.0, 10.0, "a", 0.5)]})
    result = evaluate_detection(gt, pred)
    assert result.num_ground_truth == 1 and result.average_mAP == 1.0


def test_zero_length_segments_match_as_in_the_official_code():
    # tIoU of two zero-length segments is 0/0; the official code's `tIoU < threshold` is
    # False for NaN, so it is a match. A zero-length prediction inside a real segment has
    # tIoU 0 and is not.
    gt = make_gt({"v": [(5.0, 5.0, "a"), (0.0, 10.0, "b")]})
    pred = make_pred({"v": [(5.0, 5.0, "a", 0.9), (5.0, 5.0, "b", 0.9)]})
    result = evaluate_detection(gt, pred, tiou_thresholds=[0.5])
    assert result.ap_per_class == {"a": (1.0,), "b": (0.0,)}


def test_interpolated_average_precision_by_hand():
    # Monotone precision 1, 1: AP = 1. A late hit: precision 0, 1/2 at recall 0, 1 -> 1/2.
    assert interpolated_average_precision(np.array([1.0, 1.0]), np.array([0.5, 1.0])) == 1.0
    assert interpolated_average_precision(np.array([0.0, 0.5]), np.array([0.0, 1.0])) == 0.5
    # Recall never reaches 1 (a missed instance): AP = 0.5 * 1.
    assert interpolated_average_precision(np.array([1.0]), np.array([0.5])) == 0.5


def test_class_agnostic_ignores_labels():
    gt = make_gt({"v": [(0.0, 10.0, "a"), (20.0, 30.0, "b")]})
    pred = make_pred({"v": [(0.0, 10.0, "b", 0.9), (20.0, 30.0, "a", 0.8)]})
    assert evaluate_detection(gt, pred, tiou_thresholds=[0.5]).average_mAP == 0.0
    assert evaluate_detection(gt, pred, class_agnostic=True).average_mAP == 1.0


def test_blocked_videos_leave_both_files():
    gt = make_gt({"v1": [(0.0, 10.0, "a")], "v2": [(0.0, 10.0, "a")]})
    pred = make_pred({"v1": [(0.0, 10.0, "a", 0.9)], "v2": []})
    assert evaluate_detection(gt, pred).average_mAP == 0.5
    result = evaluate_detection(gt, pred, blocked_videos={"v2"})
    assert result.average_mAP == 1.0 and result.num_ground_truth == 1


def test_thumos_thresholds():
    gt = make_gt({"v": [(0.0, 10.0, "a")]})
    pred = make_pred({"v": [(0.0, 6.5, "a", 1.0)]})  # tIoU 0.65: hit at 0.3 ... 0.6
    result = evaluate_detection(gt, pred, tiou_thresholds=THUMOS_TIOU_THRESHOLDS)
    assert list(result.mAP.values()) == [1.0, 1.0, 1.0, 1.0, 0.0]


# --- the vectorised matching against a plain loop ----------------------------------------


def loop_reference(gt, pred, thresholds):
    """Per class: rank by np.argsort(score)[::-1]; each prediction walks the ground truth of
    its video by np.argsort(tIoU)[::-1] and takes the first free one with tIoU >= t."""
    instances = [
        (v, a["label"], a["segment"])
        for v, e in gt["database"].items()
        if e["subset"] == "validation"
        for a in e["annotations"]
    ]
    labels = list(dict.fromkeys(lab for _, lab, _ in instances))
    ap = np.zeros((len(thresholds), len(labels)))
    for c, label in enumerate(labels):
        gts = [(v, s) for v, lab, s in instances if lab == label]
        dets = [(v, d) for v, ds in pred["results"].items() for d in ds if d["label"] == label]
        if not dets:
            continue
        order = np.argsort(np.array([d["score"] for _, d in dets]))[::-1]
        for t, thr in enumerate(thresholds):
            taken = set()
            hits = []
            for i in order:
                video, det = dets[i]
                mine = [j for j, (v, _) in enumerate(gts) if v == video]
                s0, e0 = det["segment"]
                tiou = []
                for j in mine:
                    s1, e1 = gts[j][1]
                    inter = max(min(e0, e1) - max(s0, s1), 0.0)
                    union = (e1 - s1) + (e0 - s0) - inter
                    tiou.append(inter / union if union > 0 else math.nan)
                tiou = np.array(tiou)
                hit = False
                for k in np.argsort(tiou)[::-1]:
                    if tiou[k] < thr:
                        break
                    if mine[k] not in taken:
                        taken.add(mine[k])
                        hit = True
                        break
                hits.append(hit)
            tp = np.cumsum(hits)
            precision = tp / np.arange(1, len(hits) + 1)
            ap[t, c] = interpolated_average_precision(precision, tp / len(gts))
    return ap.mean(axis=1)


def random_case(rng):
    labels = ["a", "b", "c"]
    videos = {}
    dets = {}
    for v in range(int(rng.integers(1, 6))):
        anns = [
            (*sorted(rng.integers(0, 6, size=2).tolist()), labels[int(rng.integers(3))])
            for _ in range(int(rng.integers(0, 6)))
        ]
        videos[f"v{v}"] = anns
        dets[f"v{v}"] = [
            (
                *sorted(rng.integers(0, 6, size=2).tolist()),
                labels[int(rng.integers(3))],
                float(rng.integers(0, 4)) / 4,  # many equal scores
            )
            for _ in range(int(rng.integers(0, 25)))
        ]
    videos["anchor"] = [(0, 5, "a")]
    return make_gt(videos), make_pred(dets)


def test_vectorised_matching_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    thresholds = [0.0, 0.2, 0.5, 0.75, 1.0]
    for _ in range(25):
        gt, pred = random_case(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EvaluationWarning)
            result = evaluate_detection(gt, pred, tiou_thresholds=thresholds)
        expected = loop_reference(gt, pred, thresholds)
        np.testing.assert_array_equal(list(result.mAP.values()), expected)


# --- documented behaviour on imperfect input ----------------------------------------------


def test_unknown_labels_warn_and_are_ignored():
    gt = make_gt({"v": [(0.0, 10.0, "a")]})
    pred = make_pred({"v": [(0.0, 10.0, "a", 0.5), (0.0, 10.0, "zzz", 0.9)]})
    with pytest.warns(EvaluationWarning, match="zzz"):
        result = evaluate_detection(gt, pred)
    assert result.average_mAP == 1.0 and result.num_predictions == 1


def test_predictions_outside_the_subset_warn_and_count_as_false_positives():
    gt = make_gt({"v": [(0.0, 10.0, "a")]})
    pred = make_pred({"v": [(0.0, 10.0, "a", 0.5)], "elsewhere": [(0.0, 10.0, "a", 0.9)]})
    with pytest.warns(EvaluationWarning, match="elsewhere"):
        result = evaluate_detection(gt, pred)
    assert result.average_mAP == pytest.approx(0.5, abs=1e-12)


def test_videos_missing_from_predictions_warn_and_count_as_missed():
    gt = make_gt({"v1": [(0.0, 10.0, "a")], "v2": [(0.0, 10.0, "a")]})
    pred = make_pred({"v1": [(0.0, 10.0, "a", 0.5)]})
    with pytest.warns(EvaluationWarning, match="v2"):
        result = evaluate_detection(gt, pred)
    assert result.average_mAP == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)  # an empty list is explicit
        evaluate_detection(gt, make_pred({"v1": [(0.0, 10.0, "a", 0.5)], "v2": []}))


def test_empty_predictions_give_zero_not_nan():
    gt = make_gt({"v": [(0.0, 10.0, "a")]})
    result = evaluate_detection(gt, make_pred({"v": []}))
    assert result.average_mAP == 0.0 and not any(math.isnan(m) for m in result.mAP.values())


@pytest.mark.parametrize(
    ("gt", "pred", "match"),
    [
        (make_gt({"v": [(0.0, 1.0, "a")]}, subset="training"), {"results": {}}, "training"),
        ({"taxonomy": []}, {"results": {}}, "database"),
        (make_gt({"v": [(0.0, 1.0, "a")]}), {"version": 1}, "results"),
        (make_gt({"v": [(2.0, 1.0, "a")]}), {"results": {}}, "start <= end"),
        (
            make_gt({"v": [(0.0, 1.0, "a")]}),
            make_pred({"v": [(2, 1.0, "a", 0.5)]}),
            r"'v'\[0\].*start <= end",
        ),
        (make_gt({"v": [(0.0, 1.0, "a")]}), make_pred({"v": [(0, 1, "a", math.nan)]}), "score"),
        (make_gt({"v": [(0.0, 1.0, "a")]}), make_pred({"v": [(0, 1, "a", "high")]}), "score"),
        (make_gt({"v": [(0.0, 1.0, "a")]}), {"results": {"v": [{"segment": [0, 1]}]}}, "label"),
        (make_gt({"v": [(0.0, 1.0, "a")]}), {"results": {"v": {"a": 1}}}, "list"),
        ({"database": {"v": {"annotations": []}}}, {"results": {}}, "subset"),
    ],
)
def test_malformed_input_raises_value_error_naming_the_problem(gt, pred, match):
    with pytest.raises(ValueError, match=match):
        evaluate_detection(gt, pred)


@pytest.mark.parametrize("thresholds", [[], [1.5], [math.nan], ["x"]])
def test_bad_thresholds_raise(thresholds):
    gt = make_gt({"v": [(0.0, 1.0, "a")]})
    with pytest.raises(ValueError, match="tiou_thresholds"):
        evaluate_detection(gt, make_pred({"v": []}), tiou_thresholds=thresholds)


def test_malformed_json_file_raises_value_error_with_path(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text('{"database": {')
    with pytest.raises(ValueError, match="gt.json"):
        evaluate_detection(bad, {"results": {}})
    with pytest.raises(TypeError, match="path"):
        evaluate_detection(42, {"results": {}})  # type: ignore[arg-type]


# --- files, results format, command line ---------------------------------------------------


def test_format_results_round_trip(tmp_path):
    gt = make_gt({"v": [(0.0, 10.0, "a")]})
    results = format_results({"v": [{"segment": [0, 10], "label": "a", "score": np.float32(1)}]})
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(results))  # plain floats: serialisable
    assert results["results"]["v"][0]["score"] == 1.0
    assert evaluate_detection(gt, str(path)).average_mAP == 1.0


def test_command_line_prints_and_writes_results(tmp_path, capsys):
    gt_path, pred_path, out = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "r.json"
    gt_path.write_text(json.dumps(make_gt({"v": [(0.0, 10.0, "a")]})))
    pred_path.write_text(json.dumps(make_pred({"v": [(0.0, 7.9, "a", 1.0)]})))
    assert main([str(gt_path), str(pred_path), "--output", str(out)]) == 0
    assert "average mAP  60.00" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["average_mAP"] == pytest.approx(0.6)
    assert list(written["mAP"]) == [
        "0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"
    ]  # fmt: skip
    assert main([str(gt_path), str(pred_path), "--dataset", "thumos", "--output", str(out)]) == 0
    assert list(json.loads(out.read_text())["mAP"]) == ["0.3", "0.4", "0.5", "0.6", "0.7"]
    assert main([str(gt_path), str(pred_path), "--tiou", "0.75", "0.8", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"] == {"0.75": 1.0, "0.8": 0.0}


def test_command_line_reports_bad_input_with_status_2(tmp_path, capsys):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(make_gt({"v": [(0.0, 10.0, "a")], "w": [(0.0, 1.0, "a")]})))
    pred_path.write_text(json.dumps(make_pred({"v": [(0.0, 10.0, "a", 1.0)]})))
    assert main([str(gt_path), str(pred_path), "--subset", "test"]) == 2
    assert "subset 'test'" in capsys.readouterr().err
    assert main([str(gt_path), str(pred_path), "--strict"]) == 2  # 'w' has no predictions
    assert "no entry in the predictions" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(make_gt({"v": [(0.0, 10.0, "a")]})))
    pred_path.write_text(json.dumps(make_pred({"v": [(0.0, 10.0, "a", 1.0)]})))
    done = subprocess.run(
        [sys.executable, "-m", "sgs_tad.evaluation", str(gt_path), str(pred_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "average mAP 100.00" in done.stdout
