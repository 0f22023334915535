"""What one training step hands the detector, and what it takes back.

The trainer calls ``detector_step(feats, batch, info)`` (or ``loss_fn(detector(feats), batch,
info)``) with a :class:`StepInfo`: the features' validity mask and lengths, where the run is
(step, epoch, iteration, rank) and a generator for the detector's own randomness (APS,
random subsets in a loss). The step returns a scalar loss or a dict holding one under the
trainer's ``loss_key``; :func:`split_loss` reads either.

Example:
    >>> import torch
    >>> loss, parts = split_loss({"loss": torch.tensor(2.0), "aux": torch.tensor(1.0)}, "loss")
    >>> float(loss), parts
    (2.0, {'aux': 1.0})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch

__all__ = ["LossOutput", "StepInfo", "split_loss", "step_generator"]

LossOutput = Union[torch.Tensor, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class StepInfo:
    """The context of one detector step.

    Attributes:
        mask: ``[B, N_max]`` bool, ``True`` on real snippets, ``False`` on padding.
        lengths: N_i of each video of the batch.
        step: Optimizer steps taken before this one (0 at the first step).
        epoch: The epoch in progress (0-based).
        iteration: Position of this batch within the accumulation window (0-based).
        rank: This process's rank; ``world_size`` ranks in all.
        world_size: Number of processes.
        generator: CPU generator for the step's randomness (APS, sampled loss terms). It is
            seeded from ``(seed, step, iteration, rank)``, so a seeded run is reproducible and a
            resumed run draws exactly what the uninterrupted one would have.
        training: ``False`` inside :meth:`~sgs_tad.SGSTrainer.evaluate`.
    """

    mask: torch.Tensor
    lengths: list[int]
    step: int
    epoch: int
    iteration: int
    rank: int
    world_size: int
    generator: torch.Generator
    training: bool = True

    @classmethod
    def from_lengths(
        cls,
        lengths: list[int],
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        step: int = 0,
        epoch: int = 0,
        iteration: int = 0,
        rank: int = 0,
        world_size: int = 1,
        training: bool = True,
    ) -> StepInfo:
        """The info of a batch of videos with ``lengths`` snippets (mask padded to the max).

        Example:
            >>> StepInfo.from_lengths([2, 3]).mask.tolist()
            [[True, True, False], [True, True, True]]
        """
        n = torch.as_tensor(lengths, device=device)
        mask = torch.arange(max(lengths), device=device)[None, :] < n[:, None]
        return cls(mask=mask, lengths=list(lengths), step=step, epoch=epoch,
                   iteration=iteration, rank=rank, world_size=world_size,
                   generator=step_generator(seed, step, iteration, rank),
                   training=training)  # fmt: skip


def step_generator(seed: int, step: int, iteration: int, rank: int) -> torch.Generator:
    """The generator of :attr:`StepInfo.generator`: a function of its arguments only."""
    return torch.Generator().manual_seed(
        seed * 1_000_003 + step * 7919 + iteration * 104_729 + rank
    )


def split_loss(out: Any, loss_key: str) -> tuple[torch.Tensor, dict[str, float]]:
    """The scalar to back-propagate and the other scalar entries (for logs) of a step's output.

    Raises:
        ValueError: a dict without ``loss_key``, or a loss that is not a scalar tensor.
    """
    parts: dict[str, float] = {}
    if isinstance(out, Mapping):
        if loss_key not in out:
            raise ValueError(
                f"the detector step returned a dict with keys {sorted(out)} but no"
                f" {loss_key!r}; pass loss_key=<the key to back-propagate> to SGSTrainer."
            )
        for key, value in out.items():
            if key != loss_key and isinstance(value, torch.Tensor) and value.numel() == 1:
                parts[key] = float(value.detach())
        out = out[loss_key]
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the loss must be a scalar tensor (or a dict holding one under {loss_key!r}); "
            f"got {got}."
        )
    return out.reshape(()), parts
