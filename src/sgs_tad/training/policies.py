"""What the trainer does when a step goes wrong: non-finite values, runs that stopped learning.

* :func:`clip_or_measure` — the global gradient norm, clipped when asked.
* :func:`check_finite_parameters` — after ``optimizer.step()``: a finite gradient can still
  overflow the weights; without this check the detector's next forward crashes far from the
  cause (an index of ``-2**63`` in the RoI pooling, say).
* :class:`SkipCounter` — skipped steps in all and in a row; too many in a row is an error, so
  a run whose every loss is NaN does not end as if it had trained.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sgs_tad.engine.base import Engine
from sgs_tad.training.callbacks import Callback

__all__ = [
    "SkipCounter",
    "check_amp_device",
    "check_choice",
    "check_finite_parameters",
    "check_int",
    "check_optimizer",
    "check_scheduler",
    "check_trainer_arguments",
    "clip_or_measure",
]


def check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> None:
    """Refuse ``value`` unless it is an int >= ``minimum`` (or ``None`` when allowed)."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"None or an int >= {minimum}" if allow_none else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}; got {value!r}.")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}.")


def clip_or_measure(parameters: Sequence[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Global L2 norm of the gradients of ``parameters``, clipping to ``max_norm`` if given."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm is not None:
        return nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    )


def check_finite_parameters(
    parameters: Sequence[nn.Parameter], names: Mapping[int, str], *, step: int
) -> None:
    """Raise :class:`FloatingPointError` naming the parameters that are not finite.

    One fused norm per device and dtype (a tensor holding a NaN or an inf has a non-finite
    norm) and one host sync each: 0.6 ms a step for the main job's 161 tensors on the CPU,
    where an ``isfinite`` per tensor took 4.3 ms. Only when a norm is not finite (a NaN, an
    inf, or a norm that overflows) is each tensor looked at, to name the culprits.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in parameters:
        groups.setdefault((p.device, p.dtype), []).append(p.detach())
    if all(
        bool(torch.isfinite(torch.stack(torch._foreach_norm(group))).all())
        for group in groups.values()
    ):
        return
    finite = torch.stack([torch.isfinite(p.detach()).all().cpu() for p in parameters])
    if bool(finite.all()):
        return  # finite values whose norm overflowed
    bad = [names.get(id(p), "?") for p, ok in zip(parameters, finite.tolist()) if not ok]
    raise FloatingPointError(
        f"optimizer step {step} made parameters non-finite: {bad[:5]}"
        f"{' …' if len(bad) > 5 else ''} ({len(bad)} tensors). The gradient was finite, so the"
        " update overflowed: lower the learning rate, set max_grad_norm, or check a custom"
        " optimizer. The last checkpoint holds the weights from before."
    )


class SkipCounter:
    """Skipped optimizer steps, in all and in a row.

    Args:
        limit: raise after this many skipped steps in a row (``None``: never).
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0
        self.in_a_row = 0

    def record(self, *, skipped: bool, step: int) -> None:
        """Count one optimizer step; raise :class:`FloatingPointError` past the limit."""
        if not skipped:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.limit is not None and self.in_a_row >= self.limit:
            raise FloatingPointError(
                f"{self.in_a_row} optimizer steps in a row were skipped (non-finite loss or"
                f" gradient), the last at step {step}; {self.total} in all. The run is not"
                " training: lower the learning rate, check the loss and the input data, or"
                " raise max_consecutive_skips."
            )


def check_amp_device(amp: str, device: torch.device) -> None:
    """Refuse ``amp="bf16"`` on a CUDA device without bf16 support (before Ampere).

    Autocast would not refuse it: bf16 kernels are emulated or missing there, so training
    would run slowly or fail deep inside the first step.
    """
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else str(device)
        raise ValueError(
            f"amp='bf16' needs a GPU with bf16 support, and {name} has none "
            "(torch.cuda.is_bf16_supported() is False; bf16 needs compute capability 8.0, "
            "Ampere, or newer). Use amp='fp16' (autocast + GradScaler) or amp='none'."
        )


def check_trainer_arguments(
    engine: Any,
    detector: Any,
    *,
    loss_fn: Any,
    detector_step: Any,
    amp: Any,
    nonfinite: Any,
    on_bad_video: Any,
    accumulation_steps: Any,
    log_every: Any,
    checkpoint_every: Any,
    checkpoint_dir: Any,
    max_consecutive_skips: Any,
    max_grad_norm: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    loss_key: Any = "loss",
    required_keys: Any = (),
    seed: Any = 0,
    log_dir: Any = None,
    callbacks: Any = (),
) -> None:
    """Refuse :class:`~sgs_tad.SGSTrainer` arguments that cannot work, before anything is built."""
    if isinstance(engine, nn.Module):
        raise TypeError(
            f"SGSTrainer takes an engine, not the encoder module ({type(engine).__name__})."
            " Wrap it: SGSTrainer(SequentializedGradientSampler(encoder, micro_batch_size=4,"
            " ratio=0.3), detector, ...), or sgs_tad.EndToEnd(encoder) for plain backprop."
        )
    if not isinstance(engine, Engine):
        raise TypeError(
            f"engine must implement sgs_tad.engine.Engine (encode, backward, "
            f"encode_features, ...); got {type(engine).__name__}."
        )
    if not isinstance(detector, nn.Module):
        raise TypeError(f"detector must be an nn.Module; got {type(detector).__name__}.")
    if (loss_fn is None) == (detector_step is None):
        raise ValueError(
            "pass exactly one of loss_fn (loss_fn(detector(feats), batch, info) -> loss)"
            " and detector_step (detector_step(feats, batch, info) -> loss or loss dict);"
            " got " + ("both." if loss_fn is not None else "neither.")
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "optimizer must be a factory optimizer(encoder, detector) -> Optimizer (so the"
            f" trainer sees the modules it trains); got {type(optimizer).__name__}."
            " Example: optimizer=sgs_tad.training.optimization.adamw(encoder_lr=1e-5), or"
            " lambda enc, det: torch.optim.SGD([*enc.parameters(), *det.parameters()],"
            " lr=0.01)."
        )
    for name, value, example in (
        ("loss_fn", loss_fn, "loss_fn=lambda out, batch, info: out.mean()"),
        ("detector_step", detector_step, "detector_step=lambda feats, batch, info: loss"),
        ("optimizer", optimizer, "optimizer=sgs_tad.training.optimization.adamw()"),
        ("scheduler", scheduler, "scheduler=sgs_tad.training.optimization.step_decay()"),
    ):
        if value is not None and not callable(value):
            raise TypeError(
                f"{name} must be a callable (or None); got {type(value).__name__} {value!r}."
                f" Example: {example}."
            )
    if not isinstance(loss_key, str):
        raise TypeError(f"loss_key must be a str (a key of the loss dict); got {loss_key!r}.")
    if isinstance(required_keys, str) or not all(isinstance(k, str) for k in required_keys):
        raise TypeError(
            f"required_keys must be a sequence of str; got {required_keys!r}. Example:"
            " required_keys=('segments', 'labels')."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {type(seed).__name__} {seed!r}.")
    for name, folder in (("checkpoint_dir", checkpoint_dir), ("log_dir", log_dir)):
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path (str or Path) or None; got {folder!r}.")
    bad = [cb for cb in callbacks if not isinstance(cb, Callback)]
    if bad:
        raise TypeError(
            f"callbacks must be sgs_tad.training.callbacks.Callback instances; got {bad[0]!r}."
            " Subclass Callback and override the hooks you need (on_step_end, ...)."
        )
    check_choice("amp", amp, ("none", "fp16", "bf16"))
    check_choice("nonfinite", nonfinite, ("skip", "raise"))
    check_choice("on_bad_video", on_bad_video, ("skip", "raise"))
    check_int("accumulation_steps", accumulation_steps, minimum=1)
    check_int("log_every", log_every, minimum=1)
    check_int("checkpoint_every", checkpoint_every, minimum=1, allow_none=True)
    check_int("max_consecutive_skips", max_consecutive_skips, minimum=1, allow_none=True)
    if checkpoint_every is not None and checkpoint_dir is None:
        raise ValueError("checkpoint_every needs checkpoint_dir=...; pass both.")
    if max_grad_norm is not None and (
        isinstance(max_grad_norm, bool)
        or not isinstance(max_grad_norm, (int, float))
        or not max_grad_norm > 0
    ):
        raise ValueError(f"max_grad_norm must be None or a number > 0; got {max_grad_norm!r}.")


def check_scheduler(scheduler: Any) -> None:
    """Refuse what a scheduler factory returned unless it has ``step()`` and ``state_dict()``."""
    if scheduler is not None and not all(
        callable(getattr(scheduler, m, None)) for m in ("step", "state_dict", "load_state_dict")
    ):
        raise TypeError(
            "the scheduler factory must return a learning-rate scheduler (with step(),"
            f" state_dict() and load_state_dict()) or None; it returned"
            f" {type(scheduler).__name__} {scheduler!r}. Example:"
            " scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5)."
        )


def check_optimizer(optimizer: Any, encoder: nn.Module, *, trains_encoder: bool) -> None:
    """Check what the optimizer factory returned.

    Raises:
        TypeError: the optimizer factory did not return a ``torch.optim.Optimizer``.

    Warns:
        UserWarning: the engine computes gradients for encoder parameters that the
            optimizer never updates (SGS's phase 3 then costs time for nothing).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "the optimizer factory must return a torch.optim.Optimizer; it returned"
            f" {type(optimizer).__name__} {optimizer!r}. Example: optimizer=lambda enc, det:"
            " torch.optim.AdamW([*enc.parameters(), *det.parameters()], lr=1e-3)."
        )
    if not trains_encoder:
        return
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trained = [n for n, p in encoder.named_parameters() if p.requires_grad]
    left_out = [n for n, p in encoder.named_parameters()
                if p.requires_grad and id(p) not in in_optimizer]  # fmt: skip
    if left_out:
        warnings.warn(
            f"{len(left_out)} of the encoder's {len(trained)} trainable parameters"
            f" ({', '.join(left_out[:3])}{', …' if len(left_out) > 3 else ''}) are not in the"
            " optimizer, yet the engine computes their gradients (ratio > 0): that work is"
            " wasted. Put them in the optimizer factory (encoder.parameters()), freeze them"
            " (requires_grad=False), or use ratio=0 for a frozen encoder.",
            UserWarning,
            stacklevel=3,
        )
