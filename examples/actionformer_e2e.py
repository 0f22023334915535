"""Train an existing ActionFormer detector end to end with a video encoder, using SGS.

ActionFormer (https://github.com/happyharrycn/actionformer_release) is not a dependency of
sgs_tad: this example expects its repository on ``PYTHONPATH`` (it imports its ``libs``
package) and wraps its unmodified ``PtTransformer`` ("LocPointTransformer"). The glue is
three pieces, marked GLUE below:

1. ActionFormer's ``model(video_list)`` takes a list of dicts with ``"feats"`` ``[C, T_i]``
   and the targets, and returns a loss dict: :func:`sgs_tad.training.adapters.video_list_step`
   builds that list from the SGS features ``[B, N_max, C]``; the trainer back-propagates
   ``"final_loss"``.
2. ActionFormer pads the batch in ``preprocessing``, under ``@torch.no_grad()`` and by
   in-place copies: the gradient to the features stops there and the encoder would never
   train (the trainer stops with a message saying so). The example replaces that method on
   the model instance by the same padding done out of place, with grad.
3. ``required_keys`` so a batch without targets is refused before any compute.

Run (a synthetic data set; the ActionFormer NMS extension is only needed for inference)::

    git clone https://github.com/happyharrycn/actionformer_release
    PYTHONPATH=actionformer_release python examples/actionformer_e2e.py --epochs 1
    PYTHONPATH=actionformer_release torchrun --nproc_per_node=2 examples/actionformer_e2e.py

``--config path/to/actionformer/configs/thumos_i3d.yaml`` builds the detector from one of
ActionFormer's configs instead of the small one below (the feature size is set to the
encoder's).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import types
from typing import Any

import torch
import torch.nn.functional as F

from sgs_tad import SequentializedGradientSampler
from sgs_tad.encoders import build_encoder
from sgs_tad.training.adapters import video_list_step
from sgs_tad.training.optimization import adamw, step_decay
from sgs_tad.training.trainer import SGSTrainer

try:  # ActionFormer's package, from its repository on PYTHONPATH
    from libs.core.config import DEFAULTS, load_config
    from libs.modeling import make_meta_arch
except ImportError as exc:  # pragma: no cover - depends on the user's setup
    raise SystemExit(
        "examples/actionformer_e2e.py needs ActionFormer's repository on PYTHONPATH:\n"
        "  git clone https://github.com/happyharrycn/actionformer_release\n"
        "  PYTHONPATH=actionformer_release python examples/actionformer_e2e.py\n"
        f"(import failed: {exc})"
    ) from exc

NUM_CLASSES = 3
SNIPPET = (3, 4, 32, 32)  # [3, L, H, W]: 4 frames of 32 x 32 per snippet


# GLUE 2: ActionFormer's padding, out of place and with grad. Same semantics as
# PtTransformer.preprocessing: pad to max_seq_len in training; in eval (batch size 1) pad to
# max_seq_len or to the next multiple of max_div_factor.
def preprocessing_with_grad(
    self: Any, video_list: list[dict[str, Any]], padding_val: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    feats = [x["feats"] for x in video_list]  # [C, T_i] each
    lengths = torch.as_tensor([f.shape[-1] for f in feats])
    max_len = int(lengths.max())
    if self.training:
        if max_len > self.max_seq_len:
            raise ValueError(f"a video has {max_len} snippets > max_seq_len={self.max_seq_len}")
        max_len = self.max_seq_len
    elif max_len <= self.max_seq_len:
        max_len = self.max_seq_len
    else:
        stride = self.max_div_factor
        max_len = (max_len + stride - 1) // stride * stride
    batched = torch.stack([F.pad(f, (0, max_len - f.shape[-1]), value=padding_val) for f in feats])
    masks = torch.arange(max_len)[None, :] < lengths[:, None]
    return batched.to(self.device), masks.unsqueeze(1).to(self.device)


def build_actionformer(feature_dim: int, max_seq_len: int, config: str | None) -> Any:
    if config is not None:
        cfg = load_config(config)
    else:
        cfg = copy.deepcopy(DEFAULTS)
        cfg["model"].update(embd_dim=64, fpn_dim=64, head_dim=64, n_head=4, n_mha_win_size=-1)
        cfg["train_cfg"]["init_loss_norm"] = 10
    # What ActionFormer's own config loader derives from the dataset section.
    cfg["model"].update(
        input_dim=feature_dim,
        num_classes=NUM_CLASSES if config is None else cfg["dataset"]["num_classes"],
        max_seq_len=max_seq_len,
        train_cfg=cfg["train_cfg"],
        test_cfg=cfg["test_cfg"],
    )
    return make_meta_arch(cfg["model_name"], **cfg["model"])


def synthetic_videos(n: int, max_len: int, seed: int) -> list[dict[str, Any]]:
    """Noise videos whose action snippets are brighter; segments in snippet units."""
    g = torch.Generator().manual_seed(seed)
    videos = []
    for _ in range(n):
        length = int(torch.randint(max_len // 2, max_len + 1, (1,), generator=g))
        snippets = torch.randn(length, *SNIPPET, generator=g) * 0.5
        start = int(torch.randint(0, length // 2, (1,), generator=g))
        end = min(length - 1, start + int(torch.randint(3, length // 2, (1,), generator=g)))
        label = int(torch.randint(0, NUM_CLASSES, (1,), generator=g))
        snippets[start : end + 1] += 1.0 + label
        videos.append(
            {
                "snippets": snippets,  # [N_i, 3, L, H, W]
                "segments": torch.tensor([[float(start), float(end)]]),  # [K, 2]
                "labels": torch.tensor([label]),  # [K]
            }
        )
    return videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="an ActionFormer config (yaml)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; one process per GPU (gloo on the CPU).
    if "RANK" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    encoder = build_encoder("small3d", widths=(8, 16, 32)).to(device)  # C = 32
    model = build_actionformer(32, args.max_seq_len, args.config).to(device)
    # GLUE 2: on this instance only; the class and other instances are untouched.
    model.preprocessing = types.MethodType(preprocessing_with_grad, model)

    trainer = SGSTrainer(
        SequentializedGradientSampler(
            encoder, micro_batch_size=args.micro_batch_size, ratio=args.ratio
        ),
        model,
        # GLUE 1 and 3: ActionFormer's model(video_list) and its "final_loss".
        detector_step=video_list_step(model, keys=("segments", "labels")),
        loss_key="final_loss",
        required_keys=("segments", "labels"),
        # A small encoder trained from scratch; 1e-6 for a pretrained TSM.
        optimizer=adamw(encoder_lr=1e-4, detector_lr=1e-3),
        scheduler=step_decay(milestones=()),
        max_grad_norm=1.0,
        amp=args.amp,
        checkpoint_dir=args.checkpoint_dir,
        progress=True,
        log_every=1,
    )
    summary = trainer.fit(
        synthetic_videos(args.videos, args.max_seq_len, seed=1),
        epochs=args.epochs,
        batch_size=args.batch_size,
        resume=args.resume and args.checkpoint_dir is not None,
    )
    if trainer.rank == 0:
        print(f"trained {summary['step']} steps ({summary['skipped_steps']} skipped)")
        print(trainer.timer.format_summary())
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
