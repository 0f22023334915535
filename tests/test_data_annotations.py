"""Tests of sgs_tad.data.annotations: reading the ActivityNet annotation format."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from sgs_tad.data.annotations import load_annotations, parse_annotations

DB = {
    "version": "1.3",
    "database": {
        "b": {
            "subset": "validation",
            "duration": 20.0,
            "annotations": [{"segment": [2.0, 5.5], "label": "run"}],
        },
        "a": {
            "subset": "training",
            "duration": 10.0,
            "annotations": [
                {"segment": [1.0, 4.0], "label": "jump"},
                {"segment": [6.0, 9.0], "label": "run"},
            ],
        },
        "c": {"subset": "testing", "duration": 5.0, "annotations": []},
    },
}


def test_reads_records_sorted_with_class_ids(tmp_path):
    path = tmp_path / "anno.json"
    path.write_text(json.dumps(DB))
    ann = load_annotations(path)
    assert [v.video_id for v in ann.videos] == ["a", "b", "c"]
    assert ann.classes == ("jump", "run")
    a = ann.by_id("a")
    assert a.segments == ((1.0, 4.0), (6.0, 9.0))
    assert a.label_ids == (0, 1)
    assert a.duration == 10.0 and a.subset == "training"
    assert ann.by_id("c").segments == ()


def test_subset_aliases_keep_the_class_list_of_the_whole_file():
    train = parse_annotations(DB, subset="train")
    val = parse_annotations(DB, subset="val")
    assert [v.video_id for v in train.videos] == ["a"]
    assert [v.video_id for v in val.videos] == ["b"]
    assert train.classes == val.classes == ("jump", "run")
    assert val.videos[0].label_ids == (1,)


def test_records_are_immutable():
    ann = parse_annotations(DB)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ann.videos[0].duration = 3.0  # type: ignore[misc]
    assert isinstance(ann.videos[0].segments, tuple)


def test_unknown_label_raises_or_is_skipped_with_a_count(caplog):
    with pytest.raises(ValueError, match=r"'run'.*not in the class list"):
        parse_annotations(DB, classes=["jump"])
    with caplog.at_level(logging.WARNING):
        ann = parse_annotations(DB, classes=["jump"], on_error="skip")
    assert [v.video_id for v in ann.videos] == ["c"]
    assert ann.skipped == 2
    assert "skipped 2 video" in caplog.text


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_annotations(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="'database'"):
        parse_annotations({"videos": {}})
    seg = {"segment": [2, 1], "label": "a"}
    bad = {"database": {"x": {"duration": 3.0, "annotations": [seg]}}}
    with pytest.raises(ValueError, match="not after its start"):
        parse_annotations(bad)
    with pytest.raises(ValueError, match="on_error"):
        parse_annotations(DB, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        parse_annotations(DB, classes=["run", "run"])


# ------------------------------------------------------------- malformed input and warnings


def test_malformed_json_names_the_file_and_the_position(tmp_path):
    path = tmp_path / "anno.json"
    path.write_text('{"database": {\n  "a": {"subset": "training",, "duration": 3}}}')
    with pytest.raises(ValueError, match=r"anno.json' is not valid JSON: .* at line 2 column 30"):
        load_annotations(path)
    with pytest.raises(ValueError, match=r"\(character 44\); fix the file there"):
        load_annotations(path)


def test_segments_outside_the_video_are_counted_in_a_warning(caplog):
    db = json.loads(json.dumps(DB))
    db["database"]["a"]["annotations"].append({"segment": [-0.5, 2.0], "label": "run"})
    db["database"]["a"]["annotations"].append({"segment": [8.0, 10.5], "label": "jump"})
    db["database"]["b"]["annotations"].append({"segment": [18.0, 25.0], "label": "run"})
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.annotations"):
        ann = parse_annotations(db)
    assert ann.by_id("a").segments[2] == (-0.5, 2.0)  # kept as in the file (clipped later)
    assert "1 segment(s) start below 0 s and 2 end past their video's duration, in 2 video(s)" in (
        caplog.text
    )
    assert "video 'a': [-0.5, 2.0] in 10.0 s" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.annotations"):
        parse_annotations(DB)
    assert "past their video's duration" not in caplog.text


def test_labels_only_in_validation_are_counted_in_a_warning(caplog):
    db = json.loads(json.dumps(DB))
    db["database"]["b"]["annotations"] += [
        {"segment": [6.0, 7.0], "label": "swim"},
        {"segment": [8.0, 9.0], "label": "swim"},
        {"segment": [10.0, 11.0], "label": "fly"},
    ]
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.annotations"):
        parse_annotations(db, subset="validation")
    assert (
        "2 label(s) occur only in the validation subset, never in training (3 instance(s)): "
        "['fly', 'swim']" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sgs_tad.data.annotations"):
        parse_annotations(db, subset="training")  # said once, where validation is read
        parse_annotations(DB)  # every validation label is also a training label
    assert "only in the validation subset" not in caplog.text
