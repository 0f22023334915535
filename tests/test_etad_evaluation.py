"""The main job's evaluation builds one engine and encodes each video in as few calls as fit."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("av")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from etad.data import data_paths, dataset_options
from etad.evaluation import EVALUATION_CALL_FACTOR, evaluate
from etad.options import parse_args
from etad.training import build_models
from sgs_tad import SequentializedGradientSampler
from sgs_tad.data import ActivityNetDataset, generate_synthetic_dataset
from sgs_tad.engine.independence import check_snippet_independence


def test_one_engine_and_few_encoder_calls_per_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    root = tmp_path / "data"
    generate_synthetic_dataset(root, num_videos=8, seed=0, val_fraction=0.5)
    args = parse_args(["--data-root", str(root), "--num-snippets", "16", "--batch-size", "1",
                       "--pretrained", "none", "--device", "cpu"])  # fmt: skip
    ann, media, mode = data_paths(args)
    options = dataset_options(args, mode)
    train = ActivityNetDataset(ann, media, subset="training", **options)
    val = ActivityNetDataset(ann, media, subset="validation", classes=train.classes, **options)
    encoder, detector = build_models(args, None, len(train.classes))

    calls: list[int] = []
    encoder.register_forward_hook(lambda module, inputs, out: calls.append(len(inputs[0])))
    check_snippet_independence(encoder.eval(), val[0].source.get_snippets(torch.arange(4)))
    check_calls, calls[:] = len(calls), []

    engines: list[dict[str, Any]] = []
    init = SequentializedGradientSampler.__init__

    def counting_init(self: SequentializedGradientSampler, *a: Any, **kw: Any) -> None:
        engines.append(kw)
        init(self, *a, **kw)

    monkeypatch.setattr(SequentializedGradientSampler, "__init__", counting_init)
    evaluate(args, encoder, detector, val, ann, list(train.classes))

    assert len(val) >= 2 and len(engines) == 1  # not one per batch of videos
    per_call = EVALUATION_CALL_FACTOR * args.micro_batch_size
    assert engines[0]["encode_batch_size"] == per_call
    # every video in ceil(N / 8K) calls, plus the independence check once
    assert len(calls) == len(val) * math.ceil(16 / per_call) + check_calls, calls
