"""Which snippets each SGS sampler picks, epoch after epoch, on the main job's features.

The gradient of every sampler is exact for the snippets it picks (``tests/test_sgs.py``); what
differs is *which* snippets the encoder learns from. This script replays the snippet draws of
training: for every training video of the main job's synthetic set, its phase-1 features from
an encoder (random init, the pretrained clip classifier, or a trained ``model.pt``), and
``--epochs`` draws per video from each sampler at γ = ``--ratio`` with the trainer's kind of
seeded generator. The features are held fixed (in training they drift with the encoder), so
this isolates the sampler's own behaviour. Printed per sampler:

* ``covered``: fraction of (video, snippet) pairs picked at least once over the epochs;
  random sampling covers ``1 - (1 - γ)^epochs`` of them.
* ``top-k share``: fraction of all picks that went to each video's ``k`` most picked snippets
  (``k`` = snippets per draw); 1.0 means the same snippets every epoch.
* ``distinct draws``: distinct sampled sets per video over the epochs (of ``--epochs``).
* ``foreground``: fraction of picked snippets whose centre lies inside an action instance,
  against the fraction of all snippets that do.

Run (one thread; about a minute)::

    OMP_NUM_THREADS=1 python benchmarks/sampler_coverage.py --weights data/pretrain/small3d.pt
    OMP_NUM_THREADS=1 python benchmarks/sampler_coverage.py             # random-init encoder
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from sgs_tad import SequentializedGradientSampler
from sgs_tad.data import ActivityNetDataset, generate_synthetic_dataset, synthetic_video_dir
from sgs_tad.encoders import build_encoder
from sgs_tad.engine.microbatch import num_sampled
from sgs_tad.samplers import make_sampler

ROOT = Path(__file__).resolve().parents[1]


def features_of(args: argparse.Namespace) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Phase-1 features ``[N, C]`` and foreground masks ``[N]`` of every training video."""
    ann = generate_synthetic_dataset(args.data_root, num_videos=args.num_videos, seed=0)
    data = ActivityNetDataset(ann, synthetic_video_dir(ann), subset="training",
                              num_snippets=args.num_snippets, snippet_length=4, size=32,
                              mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    torch.manual_seed(args.seed)
    encoder = build_encoder("small3d", weights=args.weights).eval()
    engine = SequentializedGradientSampler(encoder, micro_batch_size=8)
    feats, masks = [], []
    for i in range(len(data)):
        s = data[i]
        feats.append(engine.encode_features([s.source])[0].detach())
        t = s.snippet_times / s.duration
        fg = torch.zeros(len(t), dtype=torch.bool)
        for a, b in s.segments.tolist():
            fg |= (t >= a) & (t <= b)
        masks.append(fg)
    return feats, masks


def coverage(
    name: str,
    feats: list[torch.Tensor],
    masks: list[torch.Tensor],
    ratio: float,
    epochs: int,
    seed: int,
) -> dict[str, Any]:
    """The statistics of the module docstring for sampler ``name``."""
    sampler = make_sampler(name)
    gen = torch.Generator().manual_seed(seed)
    covered = picks = top = distinct = fg_picks = 0
    n_items = fg_items = 0
    for f, m in zip(feats, masks):
        n = f.shape[0]
        k = num_sampled(n, ratio)
        counts = torch.zeros(n)
        seen = set()
        for _ in range(epochs):
            idx = sampler(n, k, features=f, generator=gen)
            counts[idx] += 1
            seen.add(tuple(idx.tolist()))
            fg_picks += int(m[idx].sum())
        covered += int((counts > 0).sum())
        picks += int(counts.sum())
        top += int(counts.topk(k).values.sum())
        distinct += len(seen)
        n_items += n
        fg_items += int(m.sum())
    return {
        "sampler": name,
        "covered": covered / n_items,
        "top_k_share": top / picks,
        "distinct_draws": distinct / len(feats),
        "foreground_picked": fg_picks / picks,
        "foreground_all": fg_items / n_items,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Print (and optionally write) the coverage of each sampler."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="encoder checkpoint (default: init)")
    p.add_argument("--samplers", nargs="+", default=["random", "grid", "block", "fps", "kdpp"])
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-videos", type=int, default=96)
    p.add_argument("--num-snippets", type=int, default=32)
    p.add_argument("--data-root", type=Path, default=ROOT / "data" / "synthetic")
    p.add_argument("--output", type=Path, default=None, help="write the rows to this JSON")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    feats, masks = features_of(a)
    rows = [coverage(n, feats, masks, a.ratio, a.epochs, a.seed) for n in a.samplers]
    enc = a.weights if a.weights is not None else "small3d at initialisation"
    print(f"{len(feats)} training videos, γ = {a.ratio}, {a.epochs} epochs, features of {enc}")
    print("| sampler | covered | top-k share | distinct draws | foreground picked / all |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {100 * r['covered']:.0f} % | {r['top_k_share']:.2f} | "
              f"{r['distinct_draws']:.1f} of {a.epochs} | {100 * r['foreground_picked']:.0f} % / "
              f"{100 * r['foreground_all']:.0f} % |")  # fmt: skip
    if a.output is not None:
        a.output.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
