"""Host syncs per SGS step: a constant, whatever the number of micro-batches.

On CUDA every call below blocks the host until the device has finished the queued work, so
that the host cannot queue micro-batch j + 1 while the device runs j. The CPU cannot sync, but
it makes the same *calls*: :class:`SyncCounter` counts them with a ``TorchFunctionMode``.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sgs_tad import SequentializedGradientSampler

# Calls that read a value back to the host (a device sync on CUDA).
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "allclose", "equal",
         "nonzero", "unique", "cpu", "numpy"}  # fmt: skip


def _named_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    for a in (*args[1:], kwargs.get("device")):
        if isinstance(a, torch.device):
            return a
        if isinstance(a, str):
            try:
                return torch.device(a)
            except RuntimeError:
                pass
    return None


class SyncCounter(TorchFunctionMode):
    """Counts the calls that would block the host on CUDA, by call site.

    Reads back to the host (``.item()``, ``.tolist()``, ``bool(t)``, ``allclose``, ...) and
    blocking copies that name a device: from a pageable CPU tensor (a host-to-device copy on
    CUDA, which PyTorch completes with a stream sync) or to the CPU from another device.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        hit = name in READS
        if name == "to" and not kwargs.get("non_blocking", False) and args:
            target, src = _named_device(args, kwargs), args[0]
            if target is not None and isinstance(src, torch.Tensor):
                hit = (src.device.type == "cpu" and not src.is_pinned()) or (
                    target.type == "cpu" and src.device.type != "cpu"
                )
        if hit:
            frames = [
                f
                for f in traceback.extract_stack()[:-1]
                if "sgs_tad" in f.filename or "examples" in f.filename
            ]
            where = (
                f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
            )
            self.sites[f"{name} {where}"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.sites.values())


def _syncs_per_step(num_snippets: int, *, ratio: float = 1.0, **options: Any) -> SyncCounter:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Dropout(0.1))
    sgs = SequentializedGradientSampler(encoder, micro_batch_size=4, ratio=ratio, **options)
    snippets = torch.randn(2, num_snippets, 3, 4)
    for _ in range(2):  # the first step runs the one-off checks (independence, RNG use)
        counter = SyncCounter()
        with counter:
            feats = sgs.encode(snippets)
            feats.square().sum().backward()
            sgs.backward(snippets, feats)
    return counter


def test_host_syncs_per_step_do_not_grow_with_micro_batches():
    few, many = _syncs_per_step(16), _syncs_per_step(64)  # 4 and 16 micro-batches per video
    assert many.total == few.total, (few.sites, many.sites)
    assert few.total <= 8, few.sites


def test_host_syncs_constant_at_partial_ratio_and_with_kept_graphs():
    for options in ({"ratio": 0.5}, {"ratio": 0.5, "keep_graphs": "all"}):
        few, many = _syncs_per_step(16, **options), _syncs_per_step(64, **options)
        assert many.total == few.total, (options, few.sites, many.sites)
