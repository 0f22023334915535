"""The Sequentialized Gradient Sampler: the three phases of SGS (paper §3.3, App. F).

1. :meth:`SequentializedGradientSampler.encode` runs the encoder over micro-batches of at most K
   snippets without a graph and returns the features ``[B, N_max, C]`` as a leaf that requires
   grad.
2. The user runs the detector and its loss and calls ``loss.backward()``: plain autograd fills
   the detector's gradients and ``feats.grad`` (dL/dF).
3. :meth:`SequentializedGradientSampler.backward` re-runs the encoder with grad on a sampled
   fraction γ of the snippets, micro-batch by micro-batch, and back-propagates the matching rows
   of ``feats.grad`` into the encoder's ``.grad`` (accumulating, never zeroing).

Peak encoder memory is that of one micro-batch whatever N is. At γ = 1 the encoder gradient is
exactly the end-to-end one (eq. 4); at γ < 1 it is the end-to-end gradient through a mask that
keeps only the sampled snippets' feature gradients (times ``N/n`` with ``grad_scale="unbiased"``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
    >>> sgs = SequentializedGradientSampler(encoder, micro_batch_size=4, ratio=1.0)
    >>> snippets = torch.randn(2, 10, 3, 4)              # [B, N, *S]
    >>> feats = sgs.encode(snippets)                     # [B, N, C]
    >>> feats.shape, feats.requires_grad
    (torch.Size([2, 10, 8]), True)
    >>> feats.square().mean().backward()                 # stands for detector + loss
    >>> sgs.backward(snippets, feats)
    >>> encoder[1].weight.grad is not None
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from sgs_tad.engine import compiled, overflow, phase
from sgs_tad.engine.checks import (
    NO_GRAD_FEATURES_MESSAGE,
    DeterminismCheck,
    check_norm,
    check_options,
    resolve_sampler,
)
from sgs_tad.engine.heap import HeapTrimmer
from sgs_tad.engine.independence import check_snippet_independence
from sgs_tad.engine.keep import parse_keep_budget
from sgs_tad.engine.memory import SavedBytesMeter
from sgs_tad.engine.microbatch import (
    EncodePlan,
    MicroBatch,
    as_sources,
    check_features,
    device_indices,
    draw_sample,
    gathered,
    num_sampled,
    plan_encode,
    plan_recompute,
)
from sgs_tad.engine.phase1 import run_plan
from sgs_tad.engine.prefix import (
    DEFAULT_PREFIX_BUDGET,
    PrefixKeeper,
    frozen_prefix_stages,
    parse_prefix_budget,
)
from sgs_tad.engine.records import EncodeRecord, SGSStats
from sgs_tad.engine.rng import RNGState, replay_rng_state
from sgs_tad.engine.sizing import AutoSizing
from sgs_tad.engine.sources import SnippetSource

__all__ = ["NO_GRAD_FEATURES_MESSAGE", "SGSStats", "SequentializedGradientSampler"]

logger = logging.getLogger(__name__)

SnippetInput = Any  # tensor [B, N, *S] | list of tensors [N_i, *S] | list of SnippetSource
SamplerFn = Callable[..., torch.Tensor]


class SequentializedGradientSampler(AutoSizing):
    """End-to-end gradients for a video encoder with the memory of K snippets.

    Args:
        encoder: Maps snippets ``[M, *S]`` to features ``[M, C]`` (or to anything ``pool`` turns
            into ``[M, C]``). Each snippet's feature must depend on that snippet only: see
            ``docs/transparency.md``.
        micro_batch_size: K, snippets per encoder call with grad (phase 3), packed across
            videos. Peak encoder memory is that of K snippets' saved activations. ``"auto"``
            measures one snippet's saved-activation and workspace bytes with a probe
            (:func:`sgs_tad.engine.memory.measure_snippet_cost`) on the first batch and takes the
            largest K whose activations fit ``memory_budget``; the choice is logged and kept
            in :attr:`auto_choice`.
        memory_budget: Bytes (an int, or a size such as ``"2GB"``) that one micro-batch's
            encoder activations may take: needed by ``micro_batch_size="auto"``, and with it
            ``encode_batch_size="auto"`` also sizes the no-grad phase-1 calls to the budget.
        encode_batch_size: Snippets per phase-1 call for the snippets phase 3 never re-runs:
            ``None`` (default: K, as the paper's code; the memory of K snippets, measured flat
            in N), an int, or ``"auto"``. ``"auto"`` runs the first batch at K while
            measuring, at no extra cost, the bytes one snippet saves for backward (s, in phase
            3) and the transient bytes of a no-grad forward (w, in phase 1); from then on
            phase-1 calls hold as many snippets as keep their memory within one phase-3
            micro-batch's, ``K (s + w) / w``, at most ``8 K`` (:attr:`phase1_choice` records
            it). With ``memory_budget`` it is the largest call whose measured workspace fits
            the budget. On a CPU larger calls bought little time and cost resident memory
            (``docs/benchmarks.md``); on a GPU, where small calls leave the device idle, they
            are worth measuring. Sampled snippets run in micro-batches of exactly K in phase 1
            too when the encoder draws random numbers, so their dropout masks replay exactly
            whatever this is (the replayed micro-batches are the very phase-1 calls).
        keep_graphs: Budget for keeping, in phase 1, the autograd graphs of the sampled
            micro-batches, so that phase 3 back-propagates through them without re-running the
            encoder (feature-independent samplers only: the sample must be known before
            phase 1). ``0`` (default) keeps none; an int keeps up to that many snippets;
            ``"all"`` keeps every sampled micro-batch; a size such as ``"512MB"`` keeps graphs
            while their measured saved-activation bytes fit. Micro-batches beyond the budget
            are recomputed as usual. Peak memory grows by the kept graphs; the gradient is the
            same either way.
        reuse_frozen_prefix: Budget for keeping, in phase 1, the output of the encoder's
            leading stages without a trainable parameter for the sampled snippets, so that
            phase 3 re-runs only the stages that train (:mod:`sgs_tad.engine.prefix`; encoders
            with ``forward_prefix``/``forward_suffix``, as :class:`sgs_tad.encoders.VideoEncoder`;
            feature-independent samplers). ``"256MB"`` (default) a size, an int a number of
            snippets, ``True`` no limit, ``False`` off. Exact: the same gradient either way.
        prefetch: Gather (decode) the next micro-batch in a background thread while the
            encoder runs the current one. ``"auto"`` (default) does it when some source is
            lazy (not a tensor) and its gathers after the first take a millisecond or more,
            where decoding is worth overlapping; a decode cache filled by the first gather
            makes the others slices, which a thread would only delay
            (:func:`~sgs_tad.engine.microbatch.gathered`). Sources must be thread-safe for one
            reader at a time, as the :class:`SnippetSource` contract already requires
            determinism.
        ratio: γ ∈ [0, 1], fraction of each video's snippets whose feature gradient is
            back-propagated into the encoder; see :func:`~sgs_tad.engine.microbatch.num_sampled`
            for
            the exact count. 0 means a frozen encoder: phase 3 does nothing.
        sampler: Snippet sampler, a name for :func:`sgs_tad.samplers.make_sampler` or a
            callable ``sampler(num_items, num_samples, *, features=None, generator=None)``.
            Samplers with ``requires_features = True`` (``fps``, ``kdpp``) get the phase-1
            features ``[N_i, C]`` of the video and draw after phase 1.
        pool: Optional callable applied to the encoder output, e.g. global average pooling of a
            feature map ``[M, C, T, H, W]`` to ``[M, C]``.
        grad_scale: ``"none"`` back-propagates the sampled feature gradients as they are (the
            paper); ``"unbiased"`` multiplies video i's by ``N_i / n_i``, which makes the encoder
            gradient an unbiased estimate of the end-to-end one for uniform random sampling.
        preserve_rng_state: Record the torch RNG state before each phase-1 micro-batch that
            phase 3 recomputes, and replay it, so dropout masks match. Costs a few KB per
            micro-batch; turn off only for encoders without randomness.
        determinism_check: Compare the recomputed features with the phase-1 features and raise
            if they differ beyond floating-point noise of the precision used
            (:func:`~sgs_tad.engine.checks.determinism_tolerance`: TF32 on CUDA and fp16/bf16
            are looser). The comparison is reduced on the device and read once, at the end of
            phase 3, so the error comes after the encoder's ``.grad`` took the whole batch.
        norm_policy: ``"error"`` refuses an encoder with a BatchNorm in training mode (use
            :func:`sgs_tad.engine.norm.freeze_norm_layers`); ``"allow"`` runs it anyway, accepting
            gradients that are not exact and running statistics updated twice.
        independence_check: On the first batch, check once that each snippet's feature depends
            on that snippet alone (:func:`sgs_tad.check_snippet_independence`, a few small
            forwards on up to 4 snippets) and refuse an encoder that mixes the snippets of a
            micro-batch (train-mode BatchNorm, a temporal adapter over the batch, attention
            across the batch) with :class:`~sgs_tad.SnippetMixingError`: such an encoder
            breaks eq. 4, so SGS gradients would silently differ from end to end. Skipped
            with ``norm_policy="allow"``, which accepts a mixing BatchNorm.
        release_cpu_memory: On a CPU device, give the heap's free memory back to the
            system after phase 1 and after phase 3 (:func:`sgs_tad.engine.heap.release_cpu_heap`,
            glibc's ``malloc_trim``): without it, glibc's heap fragments between micro-batches
            of different sizes and the resident memory grows over iterations although the
            live tensors do not (measured in :mod:`sgs_tad.engine.heap`).
        on_nonfinite_grad: ``"raise"`` when ``feats.grad`` holds NaN/inf; ``"skip"`` skips phase 3
            for that batch (fp16 + GradScaler: :mod:`sgs_tad.engine.overflow` instead).
        generator: Source of all sampling randomness. Default: a private generator seeded from
            ``torch.initial_seed()``; the global RNG is never advanced by sampling.
        device: Device the snippets are moved to before each encoder call. Default: the device
            of the encoder's first parameter (inputs are left alone if it has none).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        micro_batch_size: int | Literal["auto"] = 4,
        memory_budget: int | str | None = None,
        encode_batch_size: int | Literal["auto"] | None = None,
        keep_graphs: int | str = 0,
        reuse_frozen_prefix: bool | int | str = DEFAULT_PREFIX_BUDGET,
        prefetch: bool | Literal["auto"] = "auto",
        ratio: float = 0.3,
        sampler: str | SamplerFn = "random",
        pool: Callable[[torch.Tensor], torch.Tensor] | None = None,
        grad_scale: Literal["none", "unbiased"] = "none",
        preserve_rng_state: bool = True,
        determinism_check: bool = True,
        norm_policy: Literal["error", "allow"] = "error",
        independence_check: bool = True,
        release_cpu_memory: bool = True,
        on_nonfinite_grad: Literal["raise", "skip"] = "raise",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.memory_budget = check_options(
            encoder,
            micro_batch_size=micro_batch_size,
            memory_budget=memory_budget,
            encode_batch_size=encode_batch_size,
            prefetch=prefetch,
            ratio=ratio,
            pool=pool,
            grad_scale=grad_scale,
            norm_policy=norm_policy,
            on_nonfinite_grad=on_nonfinite_grad,
        )
        self.encoder = encoder
        # Resolved by a probe at the first batch when "auto" (see _resolve_auto).
        self._auto_k = micro_batch_size == "auto"
        self._auto_k1 = encode_batch_size == "auto"
        self._k1_option = encode_batch_size
        self.micro_batch_size: int = 0 if self._auto_k else int(micro_batch_size)
        self.encode_batch_size: int = 0
        self.auto_choice: dict[str, Any] | None = None
        self.phase1_choice: dict[str, Any] | None = None
        self._sizing: dict[str, float | None] | None = None
        if not self._auto_k:
            self._set_encode_batch_size(None)
        self.keep_graphs = parse_keep_budget(keep_graphs)
        self.prefix_budget = parse_prefix_budget(reuse_frozen_prefix)
        self.prefetch = prefetch
        self.ratio = float(ratio)
        self.sampler = resolve_sampler(sampler)
        self.pool = pool
        self.grad_scale = grad_scale
        self.preserve_rng_state = preserve_rng_state
        self.determinism_check = determinism_check
        self.norm_policy = norm_policy
        self.independence_check = bool(independence_check)
        self.release_cpu_memory = bool(release_cpu_memory)
        self._trim_heap = HeapTrimmer()
        # Whether phase 1 leaves the global random states alone: None until the first batch
        # tells. An encoder without randomness needs no replay, so its sampled snippets may
        # share the larger phase-1 calls.
        self._rng_free: bool | None = None
        self._independence_checked = False
        self.on_nonfinite_grad = on_nonfinite_grad
        if generator is None:
            # initial_seed() reads the global seed without advancing the global generator.
            generator = torch.Generator().manual_seed(torch.initial_seed())
        self.generator = generator
        self._device = torch.device(device) if device is not None else None
        self.stats = SGSStats()
        # feats -> record; weak keys, so a batch whose features are dropped without a backward
        # call frees its record instead of leaking it.
        self._records: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        if norm_policy != "allow":
            check_norm(self.encoder)

    # ------------------------------------------------------------------ configuration helpers

    def _check_independence(self, sources: Sequence[SnippetSource]) -> None:
        """Once, on the first batch: refuse an encoder whose features mix snippets."""
        self._independence_checked = True
        if not self.independence_check or self.norm_policy == "allow":
            return
        parts, have = [], 0
        for src in sources:
            take = min(len(src), 4 - have)
            parts.append(src.get_snippets(torch.arange(take)))
            have += take
            if have >= 4:
                break
        if have < 2:  # one snippet in all cannot mix; check the next batch
            self._independence_checked = False
            return
        x = torch.cat(parts).to(self.device)
        check_snippet_independence(self.encoder, x, pool=self.pool, raise_on_failure=True)

    @property
    def needs_features(self) -> bool:
        """Whether the snippet sampler draws from the phase-1 features (after phase 1)."""
        return bool(getattr(self.sampler, "requires_features", False))

    def _target_device(self) -> torch.device | None:
        if self._device is not None:
            return self._device
        for p in self.encoder.parameters():
            return p.device
        return None

    @property
    def device(self) -> torch.device:
        """Where snippets are sent: ``device=...``, else the encoder's (CPU if it has none)."""
        return self._target_device() or torch.device("cpu")

    @property
    def trains_encoder(self) -> bool:
        """Whether :meth:`backward` puts gradient into the encoder (γ > 0)."""
        return self.ratio > 0

    def manual_seed(self, seed: int) -> None:
        """Reseed the snippet sampler's generator (the trainer does: ``seed + rank``)."""
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """The sampler generator's state and what the first batches measured (checkpoints:
        a fresh engine would measure ``"auto"`` sizes anew, and calls of another size round
        differently, so a resumed run would drift from the uninterrupted one)."""
        return {"generator": self.generator.get_state(), "sizes": self._sizes_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an older one, without ``"sizes"``: the generator)."""
        if "generator" not in state:
            raise KeyError(
                f"SGS state has keys {sorted(state)}; expected 'generator' (from state_dict())."
            )
        self.generator.set_state(state["generator"])
        if state.get("sizes") is not None:
            self._load_sizes_state(state["sizes"])

    def mask(self, feats: torch.Tensor) -> torch.Tensor:
        """Validity mask ``[B, N_max]`` of features returned by :meth:`encode` (padding False)."""
        return self._record(feats, "mask").mask

    def lengths(self, feats: torch.Tensor) -> list[int]:
        """Snippet count N_i of each video of features returned by :meth:`encode`."""
        return list(self._record(feats, "lengths").lengths)

    def _record(self, feats: torch.Tensor, caller: str) -> EncodeRecord:
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"{caller}: feats must be the tensor returned by encode().")
        record = self._records.get(feats)
        if record is None:
            raise ValueError(
                f"{caller}: feats (shape {tuple(feats.shape)}) did not come from encode() of "
                "this sampler, or backward() was already called for it. Pass the very tensor "
                "encode() returned (not a copy, slice or .detach()), once per encode() call."
            )
        return record

    # ------------------------------------------------------------------------------ phase 1

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        target = self._target_device()
        return x.to(target, non_blocking=True) if target is not None else x

    def _run(self, batch: MicroBatch, x: torch.Tensor, split: int = 0) -> torch.Tensor:
        """The encoder on snippets ``x``, or, with ``split``, its stages from ``split`` on the
        kept prefix output ``x`` (:mod:`sgs_tad.engine.prefix`); pooled and checked."""
        if split:  # noqa: SIM108
            out = self.encoder.forward_suffix(x, split)  # type: ignore[operator]
        else:
            out = self.encoder(self._to_device(x))
        if self.pool is not None:
            out = self.pool(out)
        out = check_features(out, len(batch))
        return out

    def _release_heap(self) -> None:
        # At most once a second (HeapTrimmer): a trim and the page faults that follow it cost
        # 7 % of a small encoder's step at 50 ms, and its micro-batches leave little to give
        # back anyway (sgs_tad.engine.heap).
        if self.release_cpu_memory and self.device.type == "cpu":
            self._trim_heap()

    def _state_tensors(self) -> list[torch.Tensor]:
        """Parameters and buffers: saved for backward too, but they exist anyway."""
        return [*self.encoder.parameters(), *self.encoder.buffers()]

    def encode_features(self, snippets: SnippetInput) -> torch.Tensor:
        """Phase 1 alone: every snippet's feature, without a graph, for inference or frozen use.

        Unlike :meth:`encode` it draws no sample, captures no RNG state and leaves nothing for
        a :meth:`backward`: the sampler's random stream is untouched, so evaluating between
        training steps does not change what training samples.

        Args:
            snippets: As for :meth:`encode`.

        Returns:
            Features ``[B, N_max, C]`` (no grad); rows past a video's length are zero.
        """
        sources = as_sources(snippets)
        if self._auto_k:
            self._resolve_auto(sources)
        lengths = [len(s) for s in sources]
        plan = plan_encode(lengths, self.micro_batch_size, phase1_size=self.encode_batch_size)
        self.stats = SGSStats(encode_calls=len(plan.phase1), snippets_encoded=sum(lengths))
        with torch.no_grad():
            feats, _, _, _ = run_plan(self, plan.phase1, sources, lengths)
        if not self._independence_checked:  # after phase 1, which checks the output shape
            self._check_independence(sources)
        return feats

    def encode(self, snippets: SnippetInput) -> torch.Tensor:
        """Phase 1 of a training step: encode every snippet without a graph.

        Args:
            snippets: A tensor ``[B, N, *S]``, a list of tensors ``[N_i, *S]``, or a list of
                :class:`~sgs_tad.engine.sources.SnippetSource` (decoded micro-batch by
                micro-batch).

        Returns:
            Features ``[B, N_max, C]``: a leaf with ``requires_grad=True`` and no encoder graph.
            Rows past a video's length are zero; :meth:`mask` tells which rows are real.
        """
        if self.norm_policy == "error":
            check_norm(self.encoder)
        sources = as_sources(snippets)
        if self._auto_k:
            self._resolve_auto(sources)
        lengths = [len(s) for s in sources]
        k = self.micro_batch_size
        plan: EncodePlan | None = None
        picks: list[torch.Tensor] | None = None
        if self.ratio > 0 and not self.needs_features:
            picks = [self._sample(n, None) for n in lengths]
        # Stages phase 3 can skip; not while the first batch measures the sizes of "auto".
        sizing = self._sizing
        split = (
            frozen_prefix_stages(self.encoder)
            if picks is not None
            and self.prefix_budget.enabled
            and (sizing is None or None not in (sizing["saved"], sizing["workspace"]))
            else 0
        )
        prefix = PrefixKeeper(self.prefix_budget, split) if split else None
        fold = picks is not None and self._rng_free is True and not self.keep_graphs.enabled
        fold = fold and prefix is None  # (kept prefixes belong to phase 3's micro-batches)
        if picks is not None and not fold:
            # The sample is drawn before phase 1; the plan puts the sampled snippets first, so
            # the leading phase-1 micro-batches are exactly the phase-3 ones (same snippets,
            # same order), and a replayed RNG state reproduces their dropout masks.
            plan = plan_encode(lengths, k, picks=picks, phase1_size=self.encode_batch_size)
            batches = plan.phase1
        else:
            # Nothing to replay (frozen, feature-guided, or an encoder that draws no random
            # numbers): every snippet runs at the phase-1 size; phase 3 gets its own calls.
            batches = plan_encode(lengths, k, phase1_size=self.encode_batch_size).phase1
        sampled = plan.num_sampled_batches if plan is not None else 0
        self.stats = SGSStats(encode_calls=len(batches), snippets_encoded=sum(lengths))
        before = self._rng_snapshot() if self.ratio > 0 and self._rng_free is not False else None
        feats, rng_states, autocast, kept = run_plan(
            self,
            batches, sources, lengths, sampled=sampled, capture=self.preserve_rng_state,
            prefix=prefix,
        )  # fmt: skip
        self._release_heap()
        if before is not None:
            drew = not all(torch.equal(a, b) for a, b in zip(before, self._rng_snapshot()))
            if self._rng_free is None:  # (a compiled encoder that draws is refused here)
                self._rng_free = not compiled.check_replayable(
                    self.encoder, drew=drew, preserve_rng_state=self.preserve_rng_state
                )
                logger.info("%s", "the encoder draws random numbers (dropout, ...): the sampled"
                            " snippets keep phase-1 calls of K, so that phase 3 replays their"
                            " masks exactly" if drew else "the encoder draws no random numbers:"
                            " sampled snippets share the larger phase-1 calls")  # fmt: skip
            elif drew:  # an encoder that started drawing (dropout switched on): redo phase 1
                logger.warning(
                    "the encoder drew random numbers in phase 1 although it did not before: "
                    "phase 1 is rerun with the sampled snippets in replayable calls of K"
                )
                self._rng_free = False
                return self.encode(snippets) if fold else self._finish_encode(
                    feats, sources, lengths, plan, picks, rng_states, autocast, kept, prefix
                )  # fmt: skip
        return self._finish_encode(feats, sources, lengths, plan, picks if fold else None,
                                   rng_states, autocast, kept, prefix)  # fmt: skip

    def _sample(self, n_items: int, features: torch.Tensor | None) -> torch.Tensor:
        return draw_sample(self.sampler, n_items, self.ratio, features, self.generator)

    def _rng_snapshot(self) -> list[torch.Tensor]:
        """The global random states an encoder's dropout would advance (CPU, its CUDA device)."""
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def _finish_encode(
        self,
        feats: torch.Tensor,
        sources: Sequence[SnippetSource],
        lengths: list[int],
        plan: EncodePlan | None,
        picks: list[torch.Tensor] | None,
        rng_states: list[RNGState | None],
        autocast: dict[str, Any],
        kept: list[torch.Tensor],
        prefix: PrefixKeeper | None = None,
    ) -> torch.Tensor:
        if not self._independence_checked:  # after phase 1, which checks the output shape
            self._check_independence(sources)
        feats.requires_grad_(True)

        mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool, device=feats.device)
        for v, n in enumerate(lengths):
            mask[v, :n] = True
        if self.ratio == 0:
            self._maybe_choose_phase1_size()
        self._records[feats] = EncodeRecord(lengths=lengths, mask=mask, plan=plan, picks=picks,
                                             rng_states=rng_states, autocast=autocast,
                                             kept=kept, prefixes=prefix.kept if prefix else [],
                                             prefix_stages=prefix.stages if prefix else 0,
                                             )  # fmt: skip
        return feats

    # ------------------------------------------------------------------------------ phase 3

    def backward(self, snippets: SnippetInput, feats: torch.Tensor) -> None:
        """Phase 3: re-run the sampled snippets with grad and accumulate encoder gradients.

        Call it after ``loss.backward()`` has filled ``feats.grad``, with the same snippets that
        were passed to :meth:`encode`. Encoder ``.grad`` is accumulated into, never zeroed.

        Args:
            snippets: The input given to :meth:`encode` for ``feats``.
            feats: The tensor :meth:`encode` returned.

        Raises:
            RuntimeError: ``feats.grad`` is None while γ > 0 (the detector cut the graph).
            FloatingPointError: ``feats.grad`` is not finite and ``on_nonfinite_grad="raise"``.
        """
        record = self._record(feats, "backward")
        sources = as_sources(snippets)
        lengths = [len(s) for s in sources]
        if lengths != record.lengths:
            raise ValueError(
                f"backward: the snippets have lengths {lengths[:8]} but encode() saw "
                f"{record.lengths[:8]}; pass the same snippets to encode() and backward()."
            )
        # The record is consumed here: a second backward for the same feats is an error.
        del self._records[feats]
        self.stats.recompute_calls = 0
        self.stats.snippets_recomputed = 0
        self.stats.snippets_sampled = 0
        if self.ratio == 0 or record.plan is None or not record.plan.sampled:
            record.kept, record.prefixes = [], []  # (nothing is kept without a replayable plan)
        if self.ratio == 0:
            return
        grad = feats.grad
        if grad is None:
            raise RuntimeError(NO_GRAD_FEATURES_MESSAGE)
        if not bool(torch.isfinite(grad).all()):
            if self.on_nonfinite_grad == "skip":
                logger.warning("non-finite feature gradient: phase 3 skipped for this batch")
                return
            bad = int((~torch.isfinite(grad)).sum())
            raise FloatingPointError(
                f"backward: feats.grad holds {bad} NaN/inf values; the detector loss or its "
                "backward is not finite. Check the loss for log(0)/division by zero, lower the "
                "learning rate; with fp16 use step(scaler=...) or sgs_tad.engine.overflow."
            )

        states: list[RNGState | None]
        if record.plan is not None:
            batches = record.plan.sampled
            states = list(record.rng_states)
        elif record.picks is not None:
            batches = plan_recompute(record.picks, self.micro_batch_size)
            states = [None] * len(batches)
        else:
            # Feature-guided sampler: the sample exists only now. The sampled snippets get new
            # micro-batches, so phase-1 RNG states cannot be replayed (see docs/transparency.md).
            detached = feats.detach()
            picks = [self._sample(n, detached[v, :n]) for v, n in enumerate(lengths)]
            batches = plan_recompute(picks, self.micro_batch_size)
            states = [None] * len(batches)
        scale = torch.ones(len(lengths), dtype=grad.dtype, device=grad.device)
        if self.grad_scale == "unbiased":
            for v, n in enumerate(lengths):
                scale[v] = n / num_sampled(n, self.ratio)

        index = device_indices(batches, grad.device)  # one copy for the step
        kept, record.kept = record.kept, []
        for batch, out, (videos, positions) in zip(batches, kept, index):  # kept graphs
            g = grad[videos, positions] * scale[videos].unsqueeze(1)
            torch.autograd.backward(out, g.to(out.dtype))
            self.stats.snippets_sampled += len(batch)
        n_kept = len(kept)
        del kept  # the graphs are freed by their backward; drop the outputs too
        check: DeterminismCheck | None = None
        if self.determinism_check:
            low = record.autocast.get("dtype") in (torch.float16, torch.bfloat16)
            check = DeterminismCheck(autocast=bool(record.autocast.get("enabled")) and low)
        rest = batches[n_kept:]
        # Kept frozen-prefix outputs: their micro-batches need no snippets, only the stages after.
        prefixes = (record.prefixes[n_kept:] + [None] * len(rest))[: len(rest)]
        record.prefixes = []
        todo = iter(gathered([b for b, h in zip(rest, prefixes) if h is None], sources,
                             prefetch=self.prefetch))  # fmt: skip
        with phase.recomputing():
            for i, (batch, state, (videos, positions)) in enumerate(
                zip(rest, states[n_kept:], index[n_kept:])
            ):
                x, prefixes[i] = prefixes[i], None  # (freed as the loop goes)
                split = record.prefix_stages if x is not None else 0
                if x is None:
                    _, x = next(todo)
                sizing = self._sizing
                measure = sizing is not None and sizing["saved"] is None
                with replay_rng_state(state), torch.autocast(**record.autocast):
                    if measure:
                        with SavedBytesMeter(exclude=self._state_tensors()) as meter:
                            out = self._run(batch, x, split)
                        assert sizing is not None
                        sizing["saved"] = meter.peak / len(batch)
                    else:
                        out = self._run(batch, x, split)
                if check is not None:  # reduced on the device, read once after the loop
                    check.add(out.detach(), feats.detach()[videos, positions])
                g = grad[videos, positions] * scale[videos].unsqueeze(1)
                torch.autograd.backward(out, g.to(out.dtype))
                del out
                self._release_heap()  # each micro-batch's graph, before the next one's
                self.stats.recompute_calls += 1
                self.stats.snippets_recomputed += len(batch)
                self.stats.snippets_sampled += len(batch)
        self._release_heap()
        if check is not None:
            check.raise_if_failed()
        self._maybe_choose_phase1_size()

    # ------------------------------------------------------------------------- convenience

    def step(
        self,
        snippets: SnippetInput,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        scaler: torch.amp.GradScaler | None = None,
    ) -> torch.Tensor:
        """All three phases: ``encode``, ``loss_fn(feats).backward()``, ``backward``.

        Args:
            snippets: As for :meth:`encode`.
            loss_fn: Maps the features ``[B, N_max, C]`` to a scalar loss (detector + criterion;
                use :meth:`mask` on its argument for padded batches).
            scaler: A ``GradScaler`` for fp16; the loss is scaled before the backward and the
                scaled feature gradient flows into the encoder as it is (no double scaling).
                If it overflows, the scaler is shown an inf (:mod:`sgs_tad.engine.overflow`).

        Returns:
            The loss, detached.
        """
        feats = self.encode(snippets)
        loss = loss_fn(feats)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"loss_fn must return a scalar tensor, got "
                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}."
            )
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None and overflow.feature_grad_overflowed(feats):
            del self._records[feats]  # no phase 3 for this batch: drop kept graphs now
            overflow.show_overflow(self.encoder.parameters())
            return loss.detach()
        self.backward(snippets, feats)
        return loss.detach()
