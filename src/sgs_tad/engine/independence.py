"""Check that an encoder computes each snippet's feature from that snippet alone.

SGS runs the encoder over micro-batches whose composition is an accident of the packing, and
re-runs the sampled snippets in other micro-batches than phase 1 when the sampler draws after
phase 1. Its features and gradients are those of end-to-end training only if a snippet's feature
does not depend on which other snippets share its encoder call (``docs/transparency.md``).
:func:`check_snippet_independence` measures it on a few snippets and, when it fails, names the
module responsible:

1. *Decision.* Each snippet is encoded alone (a batch of one), all together, and all together
   rolled by one position; the features must agree within the tolerance.
2. *Localisation*, only when the decision fails. The batch is run again with every module
   hooked, then with snippet 0 replaced by noise. A module whose input carried the change in
   snippet 0 only, but whose output changed for the *other* snippets, mixes the batch: a
   BatchNorm in training mode, a ``Conv1d`` run over the snippet axis, an AdaTAD-style temporal
   adapter that reshapes ``[M, C, ...]`` into ``[1, C, M]``. The snippet axis is found by size,
   so it is tracked through such reshapes. Tensors are summarised by per-snippet projections,
   never stored, so localising costs a few forward passes and no activation memory.

Example:
    >>> import torch
    >>> from torch import nn
    >>> enc = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.Flatten(2))
    >>> report = check_snippet_independence(enc, torch.randn(3, 3, 4, 8, 8),
    ...                                     pool=lambda x: x.mean(-1))
    >>> report.independent, report.suspects
    (False, ('1',))
    >>> from sgs_tad import freeze_norm_layers
    >>> enc = freeze_norm_layers(enc)
    >>> check_snippet_independence(enc, torch.randn(3, 3, 4, 8, 8),
    ...                            pool=lambda x: x.mean(-1)).independent
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from sgs_tad.engine.microbatch import EncoderOutputError, check_features

__all__ = ["IndependenceReport", "SnippetMixingError", "check_snippet_independence"]

#: Class names of stochastic-depth modules (timm ``DropPath``, torchvision ``StochasticDepth``)
#: switched to eval mode during the check, like ``nn.Dropout``.
STOCHASTIC_MODULE_NAMES: tuple[str, ...] = ("DropPath", "StochasticDepth", "DropBlock2d")

_SEED = 20_240_601
_ROOT = "(root)"


class SnippetMixingError(ValueError):
    """The encoder's feature of a snippet depends on the other snippets of its batch.

    Raised by :func:`check_snippet_independence` with ``raise_on_failure=True`` (and by the
    engine's first-batch check). The message names the measured difference, the modules
    responsible when they could be found, and the fix.

    Attributes:
        report: The :class:`IndependenceReport` of the failed check.
    """

    def __init__(self, report: IndependenceReport) -> None:
        super().__init__(report.message)
        self.report = report


@dataclass(frozen=True)
class IndependenceReport:
    """The result of :func:`check_snippet_independence`.

    Attributes:
        independent: Whether every snippet's feature was the same alone, in the batch and at
            another position of the batch, within the tolerance.
        max_abs_diff: Largest absolute difference between a snippet's feature alone and in a
            batch (over snippets, channels and both batch arrangements).
        max_rel_diff: The same, divided by the largest feature magnitude of that snippet alone.
        num_snippets: Snippets M used by the check.
        atol: Absolute tolerance used.
        rtol: Tolerance relative to each snippet's largest feature magnitude.
        train_batchnorms: Names of BatchNorm layers in training mode (they mix the batch
            whenever the check fails or not; SGS refuses them by default).
        mixing_modules: Innermost modules whose input carried a change of snippet 0 only but
            whose output changed for the other snippets, in execution order. ``"(root)"`` when
            the mixing happens in the encoder's own ``forward`` code. Empty when the check
            passed or the cause could not be localised.
        mixing_scopes: For each mixing module, the outermost module below the root that
            contains it and mixes too (e.g. the temporal adapter around a ``Conv1d``): the block
            to move out of the encoder. The module itself when no ancestor qualifies.
        batch_reshaped_modules: Modules that received a tensor whose first dimension was not
            the M snippets although the encoder's input was (the batch was folded into another
            axis, as temporal adapters do), in execution order.
        nondeterministic_modules: Modules whose output differed between two identical calls
            (randomness outside ``nn.Dropout``, non-deterministic kernels), innermost first.
        disabled_dropout: Dropout-like modules put in eval mode for the duration of the check.
        message: A one-paragraph explanation with the fix (empty when independent).
    """

    independent: bool
    max_abs_diff: float
    max_rel_diff: float
    num_snippets: int
    atol: float
    rtol: float
    train_batchnorms: tuple[str, ...] = ()
    mixing_modules: tuple[str, ...] = ()
    mixing_scopes: tuple[str, ...] = ()
    batch_reshaped_modules: tuple[str, ...] = ()
    nondeterministic_modules: tuple[str, ...] = ()
    disabled_dropout: tuple[str, ...] = ()
    message: str = ""

    @property
    def suspects(self) -> tuple[str, ...]:
        """The modules most likely responsible, most specific first (no duplicates).

        Training-mode BatchNorm layers that the localisation found mixing come first, then the
        other mixing modules; the training-mode BatchNorm layers are listed even when nothing
        was localised, since they always mix.
        """
        bns = set(self.train_batchnorms)
        ordered = [m for m in self.mixing_modules if m in bns]
        ordered += [m for m in self.mixing_modules if m not in bns]
        if self.independent:
            return ()
        if not ordered:
            ordered = list(self.train_batchnorms) + list(self.nondeterministic_modules)
        return tuple(dict.fromkeys(ordered))


# ------------------------------------------------------------------------------- helpers


def _first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a (possibly nested) tuple/list/dict, or ``obj`` itself."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(obj, dict):
        for item in obj.values():
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _default_tolerances(dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """``(atol, rtol)`` for features of ``dtype`` computed on ``device``."""
    if dtype in (torch.float16, torch.bfloat16):
        return 1e-3, 2e-2
    if dtype == torch.float64:
        return 1e-10, 1e-8
    if device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    ):
        return 1e-5, 1e-2  # TF32 convolutions round to 10 mantissa bits, per batch shape
    return 1e-6, 1e-3


def _device_of(encoder: nn.Module) -> torch.device | None:
    for p in encoder.parameters():
        return p.device
    for b in encoder.buffers():
        return b.device
    return None


@contextmanager
def _checking_state(encoder: nn.Module, device: torch.device) -> Iterator[list[str]]:
    """Dropout-like modules in eval mode, buffers and the RNG restored afterwards."""
    switched: list[tuple[str, nn.Module]] = [
        (name or _ROOT, m)
        for name, m in encoder.named_modules()
        if m.training
        and (isinstance(m, _DropoutNd) or type(m).__name__ in STOCHASTIC_MODULE_NAMES)
    ]
    # Forward calls may update buffers (running statistics of a training-mode BatchNorm): the
    # check must leave the encoder exactly as it found it.
    saved = [(b, b.detach().clone()) for b in encoder.buffers()]
    devices = [device] if device.type == "cuda" else []
    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=devices))
        stack.enter_context(torch.no_grad())
        for _, m in switched:
            m.train(False)
        try:
            yield [name for name, _ in switched]
        finally:
            for _, m in switched:
                m.train(True)
            for buf, copy in saved:
                buf.copy_(copy)


def _reseed(device: torch.device) -> None:
    """Same RNG state before every call (CPU, and the encoder's CUDA device only)."""
    torch.random.default_generator.manual_seed(_SEED)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(_SEED)


def _run(
    encoder: nn.Module, pool: Callable[[torch.Tensor], torch.Tensor] | None, x: torch.Tensor
) -> torch.Tensor:
    """Encoder (and pool) on ``x`` with the RNG reseeded, checked to be ``[M, C]``."""
    _reseed(x.device)
    out = encoder(x)
    if pool is not None:
        out = pool(out)
    return check_features(out, x.shape[0])


def _perturb(x: torch.Tensor) -> torch.Tensor:
    """``x`` with snippet 0 replaced by noise of the same mean and spread."""
    y = x.clone()
    g = torch.Generator(device="cpu").manual_seed(_SEED + 1)
    if x.is_floating_point():
        ref = x[0].float()
        noise = torch.randn(ref.shape, generator=g).to(x.device)
        spread = ref.std() if ref.numel() > 1 else ref.abs()
        y[0] = (noise * (spread + 1.0) + ref.mean()).to(x.dtype)
    else:
        flat = x[0].reshape(-1)
        y[0] = flat[torch.randperm(flat.numel(), generator=g).to(x.device)].view_as(x[0])
        if torch.equal(y[0], x[0]):
            y[0] = x[0] + 1
    return y


# ----------------------------------------------------------------------------- sketches


@dataclass(frozen=True)
class _Sketch:
    """A tensor summarised per snippet along each axis of size M.

    A first axis of size ``M * k`` is read as M consecutive blocks of k (snippet-major folding,
    as TSM's ``[M * T, C, H, W]``).
    """

    shape: tuple[int, ...]
    whole: torch.Tensor  # [3]: norm and two projections of the whole tensor
    axes: dict[int, torch.Tensor]  # axis -> [M, 3]: per-slice norm and two projections


_WEIGHTS: dict[tuple[int, str], torch.Tensor] = {}


def _weights(n: int, device: torch.device) -> torch.Tensor:
    """Deterministic, pseudo-random projection weights ``[n, 2]`` (cached per size)."""
    key = (n, str(device))
    if key not in _WEIGHTS:
        if len(_WEIGHTS) > 64:
            _WEIGHTS.clear()
        k = torch.arange(n, device=device, dtype=torch.float32)
        _WEIGHTS[key] = torch.stack(
            [torch.cos(k * 0.7548776662 + 0.3), torch.sin(k * 0.5698402910 + 1.1)], dim=1
        )
    return _WEIGHTS[key]


def _summarise(rows: torch.Tensor) -> torch.Tensor:
    """``[R, n]`` -> ``[R, 3]``: row norm and two projections."""
    w = _weights(rows.shape[1], rows.device)
    return torch.cat([rows.norm(dim=1, keepdim=True), rows @ w], dim=1).cpu()


def _sketch(t: torch.Tensor | None, m: int) -> _Sketch | None:
    if t is None or t.numel() == 0:
        return None
    x = t.detach().float()
    axes = {
        axis: _summarise(x.movedim(axis, 0).reshape(m, -1))
        for axis in range(x.dim())
        if x.shape[axis] == m or (axis == 0 and x.shape[0] % m == 0)
    }
    return _Sketch(tuple(x.shape), _summarise(x.reshape(1, -1))[0], axes)


def _changed(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    """Which summarised rows ``[R, 3]`` differ beyond the tolerance (``[R]`` bools)."""
    scale = torch.maximum(a[..., 0], b[..., 0]).unsqueeze(-1)
    # |w . d| <= |w| |d|, and |w| <= sqrt(n): compare projections at the rows' scale.
    return ((a - b).abs() > atol + rtol * scale).any(dim=-1)


def _state(a: _Sketch | None, b: _Sketch | None, atol: float, rtol: float) -> str:
    """``"same"``, ``"confined"`` (only snippet 0 changed), ``"mixed"`` or ``"unknown"``."""
    if a is None or b is None or a.shape != b.shape:
        return "unknown"
    if not bool(_changed(a.whole[None], b.whole[None], atol, rtol)[0]):
        return "same"
    if not a.axes:
        return "unknown"
    for axis, rows in a.axes.items():
        if not bool(_changed(rows[1:], b.axes[axis][1:], atol, rtol).any()):
            return "confined"
    return "mixed"


@dataclass
class _Call:
    name: str
    index: int
    leading: int | None  # first dimension of the input, when it has one
    inp: _Sketch | None = None
    out: _Sketch | None = None


def _trace(
    encoder: nn.Module,
    pool: Callable[[torch.Tensor], torch.Tensor] | None,
    x: torch.Tensor,
) -> list[_Call]:
    """Run with every module hooked; the calls in completion order (children first)."""
    m = x.shape[0]
    names = {id(mod): (name or _ROOT) for name, mod in encoder.named_modules()}
    counts: dict[str, int] = {}
    pending: dict[str, list[_Call]] = {}
    done: list[_Call] = []

    def pre(mod: nn.Module, args: Any) -> None:
        name = names[id(mod)]
        index = counts.get(name, 0)
        counts[name] = index + 1
        t = _first_tensor(args)
        lead = int(t.shape[0]) if t is not None and t.dim() > 0 else None
        pending.setdefault(name, []).append(_Call(name, index, lead, inp=_sketch(t, m)))

    def post(mod: nn.Module, args: Any, output: Any) -> None:
        stack = pending.get(names[id(mod)])
        if stack:
            call = stack.pop()
            call.out = _sketch(_first_tensor(output), m)
            done.append(call)

    handles = []
    try:
        for mod in encoder.modules():
            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(post))
        _run(encoder, pool, x)
    finally:
        for h in handles:
            h.remove()
    return done


def _innermost(names: list[str]) -> tuple[str, ...]:
    """Drop the names that are ancestors of another (the root too, unless it is alone)."""

    def ancestor(a: str, b: str) -> bool:
        return a != b and (a == _ROOT or b.startswith(a + "."))

    inner = [n for n in names if not any(ancestor(n, o) for o in names)]
    return tuple(dict.fromkeys(inner))


def _contains(scope: str, name: str) -> bool:
    return scope == _ROOT or name == scope or name.startswith(scope + ".")


@dataclass(frozen=True)
class _Findings:
    mixing: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    folded: tuple[str, ...] = ()
    nondeterministic: tuple[str, ...] = ()


def _localise(
    encoder: nn.Module,
    pool: Callable[[torch.Tensor], torch.Tensor] | None,
    x: torch.Tensor,
    atol: float,
    rtol: float,
) -> _Findings:
    """The modules that mix the batch, their scopes, folded inputs, non-deterministic ones."""
    m = x.shape[0]
    first, again, perturbed = (
        _trace(encoder, pool, x),
        _trace(encoder, pool, x),
        _trace(encoder, pool, _perturb(x)),
    )
    key = {(c.name, c.index): c for c in again}
    nondeterministic = []
    for c in first:
        twin = key.get((c.name, c.index))
        if twin is None:
            continue
        if _state(c.inp, twin.inp, atol, rtol) == "same" and _state(
            c.out, twin.out, atol, rtol
        ) not in ("same", "unknown"):
            nondeterministic.append(c.name)
    key = {(c.name, c.index): c for c in perturbed}
    mixing: list[str] = []
    reshaped: list[str] = []
    for c in first:
        twin = key.get((c.name, c.index))
        if twin is None:
            continue
        if c.leading is not None and c.leading != m and c.name != _ROOT:
            reshaped.append(c.name)
        if c.name in nondeterministic:
            continue
        if _state(c.inp, twin.inp, atol, rtol) in ("same", "confined") and (
            _state(c.out, twin.out, atol, rtol) == "mixed"
        ):
            mixing.append(c.name)
    inner = _innermost(mixing)
    scopes = []
    for n in inner:
        outer = [s for s in mixing if s != _ROOT and _contains(s, n)]
        scopes.append(min(outer, key=len) if outer else n)
    scopes = list(dict.fromkeys(scopes))
    # Folding matters only where the mixing happens: inside a mixing scope.
    folded = [n for n in reshaped if any(_contains(s, n) for s in scopes)]
    return _Findings(
        inner, tuple(scopes), tuple(dict.fromkeys(folded)), _innermost(nondeterministic)
    )


def _describe(encoder: nn.Module, names: tuple[str, ...]) -> str:
    mods = dict(encoder.named_modules())
    parts = []
    for n in names[:5]:
        mod = encoder if n == _ROOT else mods.get(n)
        parts.append(f"{n!r} ({type(mod).__name__})" if mod is not None else repr(n))
    return ", ".join(parts) + (" …" if len(names) > 5 else "")


def _message(report: IndependenceReport, encoder: nn.Module) -> str:
    head = (
        f"snippet features depend on the other snippets of the encoder call: a snippet encoded "
        f"alone and inside a batch of {report.num_snippets} differs by up to "
        f"{report.max_abs_diff:.3g} ({report.max_rel_diff:.3g} relative to its largest feature; "
        f"tolerance atol={report.atol:g}, rtol={report.rtol:g}), so SGS micro-batches would "
        "change the features and their gradients."
    )
    fixes = []
    bns = [n for n in report.mixing_modules if n in report.train_batchnorms]
    if bns or (report.train_batchnorms and not report.mixing_modules):
        names = bns or list(report.train_batchnorms)
        fixes.append(
            f"BatchNorm in training mode {_describe(encoder, tuple(names))} normalises with the "
            "statistics of the whole batch. Fix: encoder = sgs_tad.freeze_norm_layers(encoder) "
            "(as the paper does), put those layers in eval mode, or use GroupNorm."
        )
    others = tuple(n for n in report.mixing_modules if n not in report.train_batchnorms)
    if others:
        where = _describe(encoder, others)
        outer = tuple(
            s for s in report.mixing_scopes if s not in others and s not in report.train_batchnorms
        )
        if outer:
            where += f" (in {_describe(encoder, outer)})"
        folded = report.batch_reshaped_modules
        fold = (
            f" The batch was folded into another axis before {_describe(encoder, folded)}."
            if folded
            else ""
        )
        fixes.append(
            f"{where} mixes snippets across the batch dimension (attention or convolution over "
            f"snippets, e.g. an AdaTAD-style temporal adapter).{fold} Fix: move that temporal "
            "module out of the encoder into the detector, which sees all features of a video "
            "at once, or make it act within one snippet."
        )
    if report.nondeterministic_modules and not report.mixing_modules:
        fixes.append(
            f"{_describe(encoder, report.nondeterministic_modules)} gives different outputs for "
            "identical inputs: randomness outside nn.Dropout (Python random, numpy, functional "
            "dropout) or non-deterministic kernels. Make it deterministic in the check's "
            "conditions, or pass a larger rtol if the difference is rounding noise."
        )
    if not fixes:
        fixes.append(
            "No single module could be blamed: look for operations over dim 0 in the encoder's "
            "forward (mean/sum/softmax over the batch, torch.cat of snippets), state updated "
            "during forward, or rounding noise (then pass a larger rtol)."
        )
    return " ".join([head, *fixes, "See docs/transparency.md."])


# --------------------------------------------------------------------------------- API


def check_snippet_independence(
    encoder: nn.Module,
    snippets: torch.Tensor,
    *,
    pool: Callable[[torch.Tensor], torch.Tensor] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    max_snippets: int = 4,
    raise_on_failure: bool = False,
) -> IndependenceReport:
    """Check that each snippet's feature depends on that snippet alone.

    Encodes each of the first ``max_snippets`` snippets alone (a batch of one), all together,
    and all together rolled by one position, and compares each snippet's features. On failure
    it hooks every module to find those that mix the batch (see the module docstring); the
    check costs ``M + 2`` small forward passes when it passes and 3 more when it fails.

    The encoder runs in its current train/eval mode, under ``torch.no_grad``, with two
    exceptions that keep the check meaningful: dropout-like modules (``nn.Dropout*``,
    ``DropPath``, ``StochasticDepth``) are put in eval mode for the check, because their
    masks legitimately differ with the batch composition and SGS replays them, and the RNG is
    reseeded before every call and restored afterwards. Buffers (e.g. the running statistics
    of a training-mode BatchNorm) are restored too: the encoder is left as it was found.

    Args:
        encoder: Maps snippets ``[M, *S]`` to ``[M, C]`` (or to what ``pool`` turns into it).
        snippets: At least 2 snippets ``[M, *S]``, e.g. the first of a batch; they are moved
            to the device of the encoder's parameters.
        pool: Optional callable applied to the encoder output, as in the engine.
        atol: Absolute tolerance. Default: 1e-6 in float32 (1e-5 with TF32 on CUDA), 1e-3 in
            half precision.
        rtol: Tolerance relative to each snippet's largest feature magnitude. Default: 1e-3 in
            float32, 1e-2 with TF32 on CUDA, 2e-2 in half precision.
        max_snippets: At most this many snippets are used (from the start).
        raise_on_failure: Raise :class:`SnippetMixingError` instead of returning a failed
            report.

    Returns:
        An :class:`IndependenceReport`.

    Raises:
        SnippetMixingError: The check failed and ``raise_on_failure`` is true.
        ValueError: Fewer than 2 snippets, or an encoder output that is not ``[M, C]``.

    Example:
        >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.5))
        >>> check_snippet_independence(enc, torch.randn(4, 3, 4)).independent
        True
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}.")
    if not isinstance(snippets, torch.Tensor) or snippets.dim() < 1:
        raise TypeError(
            f"snippets must be a tensor [M, *S] of at least 2 snippets, got "
            f"{type(snippets).__name__}. Pass e.g. one video's snippets, snippets[0] of a "
            "[B, N, *S] batch."
        )
    if isinstance(max_snippets, bool) or not isinstance(max_snippets, int) or max_snippets < 2:
        raise ValueError(f"max_snippets must be an int >= 2, got {max_snippets!r}.")
    if snippets.shape[0] < 2:
        raise ValueError(
            f"check_snippet_independence needs at least 2 snippets to compare a snippet alone "
            f"with the same snippet among others; got shape {tuple(snippets.shape)}. Pass more "
            "snippets of the video (or of several videos, stacked)."
        )
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"{name} must be None (automatic) or a number >= 0, got {value!r}.")
    device = _device_of(encoder) or snippets.device
    x = snippets[:max_snippets].to(device)
    m = int(x.shape[0])
    train_bns = tuple(
        name or _ROOT
        for name, mod in encoder.named_modules()
        if isinstance(mod, _BatchNorm) and mod.training
    )
    with _checking_state(encoder, device) as disabled:
        alone: torch.Tensor | None
        try:
            alone = torch.cat([_run(encoder, pool, x[i : i + 1]).float() for i in range(m)])
        except EncoderOutputError:
            raise
        except (RuntimeError, ValueError):
            if not train_bns:
                raise
            alone = None  # e.g. BatchNorm1d refuses a batch of one in training mode
        raw = _run(encoder, pool, x)
        together = raw.float()
        rolled = _run(encoder, pool, torch.roll(x, 1, dims=0)).float().roll(-1, dims=0)
        default_atol, default_rtol = _default_tolerances(raw.dtype, raw.device)
        atol_ = float(atol) if atol is not None else default_atol
        rtol_ = float(rtol) if rtol is not None else default_rtol
        if alone is None:
            max_abs = max_rel = math.inf
            independent = False
        else:
            scale = alone.abs().amax(dim=1, keepdim=True)
            diff = torch.maximum((together - alone).abs(), (rolled - alone).abs())
            max_abs = float(diff.max())
            max_rel = float((diff / scale.clamp_min(torch.finfo(diff.dtype).tiny)).max())
            independent = bool((diff <= atol_ + rtol_ * scale).all())
        found = _Findings()
        if not independent:
            # Rows a module did not mix are recomputed with the same shapes and kernels in both
            # runs, hence (nearly) bit-identical; a tight tolerance catches small mixers whose
            # effect later layers amplify.
            found = _localise(encoder, pool, x, atol_ * 1e-2, rtol_ * 1e-2)
    report = IndependenceReport(
        independent=independent,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        num_snippets=m,
        atol=atol_,
        rtol=rtol_,
        train_batchnorms=train_bns,
        mixing_modules=found.mixing,
        mixing_scopes=found.scopes,
        batch_reshaped_modules=found.folded,
        nondeterministic_modules=found.nondeterministic,
        disabled_dropout=tuple(disabled),
    )
    if not independent:
        report = replace(report, message=_message(report, encoder))
        if raise_on_failure:
            raise SnippetMixingError(report)
    return report
