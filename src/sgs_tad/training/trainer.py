"""SGSTrainer: the end-to-end training loop around an engine and a detector.

Each iteration asks the engine for the features (phase 1 of SGS:
:meth:`~sgs_tad.SequentializedGradientSampler.encode`), runs the detector step and
``loss.backward()`` (phase 2), then lets the engine finish the encoder's gradient (phase 3:
:meth:`~sgs_tad.SequentializedGradientSampler.backward`, which *adds* to ``.grad``). Once every
``accumulation_steps`` iterations exactly **one** ``optimizer.step()`` updates encoder and
detector together. (The original ETAD code steps twice per iteration and relies on
``zero_grad(set_to_none=True)`` in between; here gradients are zeroed once, after the step.)

The trainer is handed built parts: the engine (which owns the encoder and its device), the
detector, and optimizer/scheduler *factories* from :mod:`sgs_tad.training.optimization`, where
every learning rate is set. Under ``torchrun`` the gradients are averaged over ranks by one
explicit all-reduce per step, not by DDP hooks: see :mod:`sgs_tad.training.distributed` for why.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from sgs_tad import SequentializedGradientSampler
    >>> engine = SequentializedGradientSampler(nn.Linear(6, 4), ratio=1.0)
    >>> detector = nn.Linear(4, 1)
    >>> data = [{"snippets": torch.randn(5, 6), "target": torch.tensor(1.0)} for _ in range(4)]
    >>> def loss_fn(scores, batch, info):          # scores [B, N_max, 1]
    ...     return (scores.mean(dim=(1, 2)) - torch.stack(batch["target"])).square().mean()
    >>> trainer = SGSTrainer(engine, detector, loss_fn=loss_fn)
    >>> summary = trainer.fit(data, epochs=2, batch_size=2)
    >>> trainer.step, summary["skipped_steps"]
    (4, 0)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from sgs_tad.engine.base import Engine
from sgs_tad.engine.microbatch import as_sources
from sgs_tad.engine.overflow import feature_grad_overflowed
from sgs_tad.engine.sgs import NO_GRAD_FEATURES_MESSAGE
from sgs_tad.engine.sources import SnippetReadError
from sgs_tad.training import distributed as dist_utils
from sgs_tad.training.batches import SNIPPETS_KEY, check_batch, count_snippets, make_loader
from sgs_tad.training.callbacks import Callback
from sgs_tad.training.checkpoint import CheckpointManager, model_fingerprint, plain_settings
from sgs_tad.training.inference import EvalStep, evaluate
from sgs_tad.training.metrics import MetricsWriter, PhaseTimer, ProgressBar, format_bytes
from sgs_tad.training.optimization import OptimizerFactory, adamw, step_decay, trainable_parameters
from sgs_tad.training.outputs import OutputLock
from sgs_tad.training.policies import (
    SkipCounter,
    check_amp_device,
    check_int,
    check_optimizer,
    check_scheduler,
    check_trainer_arguments,
)
from sgs_tad.training.resume import restore_trainer_state, resume_trainer, trainer_state
from sgs_tad.training.signals import StopOnSignal
from sgs_tad.training.steps import LossOutput, StepInfo, split_loss
from sgs_tad.training.window import StepWindow, take_optimizer_step

__all__ = ["NO_GRAD_FEATURES_MESSAGE", "SGSTrainer"]

logger = logging.getLogger(__name__)

DetectorStep = Callable[[torch.Tensor, Mapping[str, Any], StepInfo], LossOutput]
LossFn = Callable[[Any, Mapping[str, Any], StepInfo], LossOutput]


class SGSTrainer:
    """Train a video encoder and a detector end to end, on one device or many.

    The batch contract: each batch is a mapping with ``"snippets"`` (a tensor
    ``[B, N, *S]``, a list of ``[N_i, *S]`` tensors or of
    :class:`~sgs_tad.engine.sources.SnippetSource`) plus whatever the loss needs; see
    :mod:`sgs_tad.training.batches`. The trainer never moves or re-wraps your modules: put them on
    their device first (one GPU per process under ``torchrun``).

    Args:
        engine: an :class:`~sgs_tad.engine.Engine`:
            :class:`~sgs_tad.SequentializedGradientSampler` (SGS) or
            :class:`~sgs_tad.engine.EndToEnd` (plain backprop). Its ``encoder`` and
            ``device`` are the trainer's. Freeze norm layers or stages on the encoder before
            building the engine (:func:`sgs_tad.freeze_norm_layers`,
            :func:`sgs_tad.freeze_stages`).
        detector: the detection model.
        loss_fn: ``loss_fn(detector(feats), batch, info) -> loss``, ``feats`` ``[B, N_max, C]``
            padded, ``info`` a :class:`~sgs_tad.training.steps.StepInfo` (``info.mask`` is the
            ``[B, N_max]`` validity mask).
        detector_step: instead of ``loss_fn``, ``detector_step(feats, batch, info) -> loss``
            for detectors that build their own inputs and loss (ActionFormer). A loss may be a
            scalar tensor or a dict holding ``loss_key``; other scalar entries are logged.
        loss_key: the dict entry that is back-propagated (ActionFormer's is ``"final_loss"``).
        required_keys: batch keys the detector step needs; a batch without them is refused.
        optimizer: a factory ``optimizer(encoder, detector) -> Optimizer``; default the
            paper's AdamW, :func:`sgs_tad.training.optimization.adamw`.
        scheduler: a factory ``scheduler(optimizer) -> LRScheduler``; default the paper's
            :func:`~sgs_tad.training.optimization.step_decay`. Stepped per epoch, or per optimizer
            step when the factory's ``interval`` is ``"step"``
            (:func:`~sgs_tad.training.optimization.warmup_cosine`).
        max_grad_norm: clip the global gradient norm (encoder and detector together).
        accumulation_steps: iterations whose gradients are averaged into one optimizer step;
            a window cut short (the end of an epoch or of an iterable) is averaged over its
            own length.
        amp: ``"fp16"`` (autocast + GradScaler), ``"bf16"`` (autocast) or ``"none"``; the
            autocast covers all three phases (phase 3 replays phase 1's autocast state).
            With fp16, an overflow of the scaled feature gradient alone is handed to the
            GradScaler whatever ``nonfinite`` says: it skips the step (counted in
            ``skipped_steps``) and backs the scale off (:mod:`sgs_tad.engine.overflow`).
        nonfinite: on a NaN/inf loss or gradient, ``"skip"`` the optimizer step and count it
            (``trainer.skipped_steps``), or ``"raise"`` :class:`FloatingPointError`.
        max_consecutive_skips: with ``nonfinite="skip"``, raise :class:`FloatingPointError`
            after this many skipped steps in a row (a run whose every loss is NaN must not end
            as if it succeeded); ``None`` never stops.
        on_bad_video: when a source raises :class:`~sgs_tad.engine.sources.SnippetReadError` (an
            unreadable or corrupt video), ``"skip"`` the batch, count it
            (``trainer.bad_videos``) and go on, or ``"raise"``.
        seed: seeds the engine's sampler (``seed + rank``), the detector step's generator and
            the data order (same on every rank). The global RNG is not seeded here; it is
            saved and restored by checkpoints.
        settings: the run's settings (JSON-able), stored in checkpoints; a resume with other
            settings is refused, naming each, unless ``fit(resume_override=True)``.
        checkpoint_dir: write checkpoints here (rank 0) at each epoch end and every
            ``checkpoint_every`` optimizer steps, and on a stop request.
        checkpoint_every: optimizer steps between checkpoints (``None``: epoch ends only).
        keep_last: checkpoints kept.
        log_dir: write ``metrics.jsonl`` here (rank 0).
        tensorboard: also write TensorBoard scalars to ``log_dir/tensorboard``.
        progress: show a tqdm progress bar (rank 0) with loss, snippets/s and peak memory.
        log_every: optimizer steps between metric records.
        sync_timing: synchronise a CUDA device at each phase boundary so that the per-phase
            times (``fit()``'s ``"phases"``) are the device's, as benchmarks need; off by
            default, since it stalls the host eight times per step.
        callbacks: :class:`~sgs_tad.training.callbacks.Callback` objects.
    """

    def __init__(
        self,
        engine: Engine,
        detector: nn.Module,
        *,
        loss_fn: LossFn | None = None,
        detector_step: DetectorStep | None = None,
        loss_key: str = "loss",
        required_keys: Sequence[str] = (),
        optimizer: OptimizerFactory | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        max_grad_norm: float | None = None,
        accumulation_steps: int = 1,
        amp: Literal["none", "fp16", "bf16"] = "none",
        nonfinite: Literal["skip", "raise"] = "skip",
        max_consecutive_skips: int | None = 20,
        on_bad_video: Literal["skip", "raise"] = "skip",
        seed: int = 0,
        settings: Mapping[str, Any] | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        keep_last: int = 3,
        log_dir: str | Path | None = None,
        tensorboard: bool = False,
        progress: bool = False,
        log_every: int = 10,
        sync_timing: bool = False,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        check_trainer_arguments(engine, detector, loss_fn=loss_fn, detector_step=detector_step,
                                amp=amp, nonfinite=nonfinite, on_bad_video=on_bad_video,
                                accumulation_steps=accumulation_steps, log_every=log_every,
                                checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir,
                                max_consecutive_skips=max_consecutive_skips,
                                max_grad_norm=max_grad_norm, optimizer=optimizer,
                                scheduler=scheduler, loss_key=loss_key,
                                required_keys=required_keys, seed=seed, log_dir=log_dir,
                                callbacks=callbacks)  # fmt: skip
        check_amp_device(amp, engine.device)
        self.rank = dist_utils.get_rank()
        self.world_size = dist_utils.get_world_size()
        self.engine = engine
        self.engine.encoder = dist_utils.unwrap_model(engine.encoder)
        self.detector = dist_utils.unwrap_model(detector)
        if engine.trains_encoder and not trainable_parameters(self.encoder):
            raise ValueError(
                "the engine back-propagates into the encoder (ratio > 0), but none of its"
                " parameters has requires_grad=True (all frozen). Pass ratio=0 for a frozen"
                " encoder (phase 3 is then skipped), or unfreeze some encoder stages."
            )
        # Every rank starts from rank 0's weights, as DDP would do when wrapping.
        dist_utils.broadcast_module_states([self.encoder, self.detector])
        self.device = engine.device
        self.engine.manual_seed(seed + self.rank)
        self.loss_fn = loss_fn
        self.detector_step = detector_step
        self.loss_key = loss_key
        self.required_keys = tuple(required_keys)
        self.seed = seed
        # Converted now (paths to str, numpy values to numbers): a checkpoint must hold
        # values that torch.load(weights_only=True) reads back at resume.
        self.settings = plain_settings(settings)

        make_optimizer = adamw() if optimizer is None else optimizer
        self.optimizer = make_optimizer(self.encoder, self.detector)
        check_optimizer(self.optimizer, self.encoder, trains_encoder=engine.trains_encoder)
        make_scheduler = step_decay() if scheduler is None else scheduler
        self.scheduler: Any = make_scheduler(self.optimizer)
        check_scheduler(self.scheduler)
        self.scheduler_interval = getattr(make_scheduler, "interval", "epoch")
        self.max_grad_norm = max_grad_norm
        self.accumulation_steps = accumulation_steps
        self.amp = amp
        self.scaler: Any = None
        if amp == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.nonfinite = nonfinite
        self.on_bad_video = on_bad_video
        named = [*(("encoder." + n, p) for n, p in self.encoder.named_parameters()),
                 *(("detector." + n, p) for n, p in self.detector.named_parameters())]  # fmt: skip
        self.parameters = trainable_parameters(self.encoder, self.detector)
        self._names = {id(p): n for n, p in reversed(named)}
        self.reducer = dist_utils.GradientReducer(self.parameters, flags_device=self.device)
        self.checkpoints = (
            CheckpointManager(checkpoint_dir, keep_last=keep_last) if checkpoint_dir else None
        )
        self.checkpoint_every = checkpoint_every
        self.metrics = MetricsWriter(log_dir, tensorboard=tensorboard, enabled=self.rank == 0)
        self.progress = progress
        self.log_every = log_every
        self.callbacks = list(callbacks)
        self.timer = PhaseTimer(self.device, synchronize=sync_timing)

        self.epoch = 0  # epoch in progress (0-based)
        self.epoch_iteration = 0  # batches of `epoch` already consumed
        self.step = 0  # optimizer steps taken (skipped ones included)
        self.skips = SkipCounter(max_consecutive_skips)
        self.bad_videos: list[dict[str, Any]] = []
        self.stopped = False
        self._stop_requested = False
        self._stop_agreed = False
        self._window = StepWindow()

    # ------------------------------------------------------------------------ public helpers

    @property
    def encoder(self) -> nn.Module:
        """The engine's encoder."""
        return self.engine.encoder

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a non-finite loss or gradient (resumes included)."""
        return self.skips.total

    def request_stop(self) -> None:
        """Stop after the current optimizer step, saving a checkpoint (what SIGTERM does)."""
        self._stop_requested = True

    def fingerprint(self) -> str:
        """Digest of the encoder's and detector's state-dict names, shapes and dtypes."""
        return model_fingerprint({"encoder": self.encoder, "detector": self.detector})

    def autocast(self) -> AbstractContextManager[Any]:
        """The autocast context of the ``amp`` setting (a no-op for ``"none"``)."""
        if self.amp == "none":
            return nullcontext()
        dtype = torch.float16 if self.amp == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _info(self, snippets: Any, feats: torch.Tensor, *, training: bool) -> StepInfo:
        return StepInfo.from_lengths(
            [len(s) for s in as_sources(snippets)],
            device=feats.device,
            seed=self.seed,
            step=self.step,
            epoch=self.epoch,
            iteration=self._window.iterations if training else 0,
            rank=self.rank,
            world_size=self.world_size,
            training=training,
        )

    def _loss(self, feats: torch.Tensor, batch: Mapping[str, Any], info: StepInfo) -> Any:
        if self.detector_step is not None:
            return self.detector_step(feats, batch, info)
        assert self.loss_fn is not None  # one of the two, checked in __init__
        return self.loss_fn(self.detector(feats), batch, info)

    # ------------------------------------------------------------------------- one iteration

    def _iteration(self, batch: Any) -> None:
        batch = check_batch(batch, self.required_keys)
        snippets = batch[SNIPPETS_KEY]
        for cb in self.callbacks:
            cb.on_batch_start(self, batch)
        if self._window.bad or self._window.found_inf:
            return  # this step is skipped anyway; don't spend compute on it
        backward_done = False
        try:
            with self.timer.phase("encode"), self.autocast():
                feats = self.engine.encode(snippets)
            info = self._info(snippets, feats, training=True)
            with self.timer.phase("detector"):
                try:
                    with self.autocast():
                        loss, parts = split_loss(self._loss(feats, batch, info), self.loss_key)
                    value = float(loss.detach())
                except FloatingPointError as err:  # the detector met non-finite values itself
                    if self.nonfinite == "raise":
                        raise
                    logger.warning("step %d skipped: %s", self.step, err)
                    self._window.bad = True
                    return
                if not math.isfinite(value):
                    if self.nonfinite == "raise":
                        raise FloatingPointError(
                            f"non-finite loss {value} at epoch {self.epoch}, step {self.step}."
                            " Lower the learning rate, check the loss for log(0)/0-division,"
                            " or pass nonfinite='skip' to skip such steps."
                        )
                    logger.warning("non-finite loss %s at step %d: step skipped", value, self.step)
                    self._window.bad = True
                    return
                backward_done = True
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            with self.timer.phase("update"):
                if self.scaler is not None and feature_grad_overflowed(feats):
                    # fp16: the scaled dL/dF overflowed its fp16 buffer (a gain after the
                    # detector's fp32 cast, say) while the parameter gradients may all be
                    # finite. That is the GradScaler's business, whatever the policies say:
                    # the step shows it an inf so that it skips and backs off (window.py).
                    # Phase 3 is not run: the step is skipped anyway.
                    logger.info("fp16 feature gradient overflow at step %d (scale %g): the"
                                " step is skipped and the scale backed off", self.step,
                                self.scaler.get_scale())  # fmt: skip
                    self._window.found_inf = True
                    self._window.add(value, parts, count_snippets(snippets))
                    return
                try:
                    self.engine.backward(snippets, feats)
                except FloatingPointError:
                    # A finite loss with a non-finite feature gradient (fp16 overflow): the
                    # GradScaler, or the policy, skips this step.
                    if self.nonfinite == "raise":
                        raise
                    logger.warning("non-finite feature gradient at step %d: step skipped",
                                   self.step)  # fmt: skip
                    self._window.bad = True
                    return
        except SnippetReadError as err:
            if self.on_bad_video == "raise":
                raise
            self._skip_bad_video(err, batch, spoilt_window=backward_done)
            return
        self._window.add(value, parts, count_snippets(snippets))

    def _skip_bad_video(self, err: SnippetReadError, batch: Any, *, spoilt_window: bool) -> None:
        entry = {"video_id": err.video_id, "path": None if err.path is None else str(err.path),
                 "error": str(err), "epoch": self.epoch, "step": self.step}  # fmt: skip
        self.bad_videos.append(entry)
        logger.warning(
            "skipping a batch at epoch %d, step %d: %s (on_bad_video='skip'; %d so far)",
            self.epoch, self.step, err, len(self.bad_videos),
        )  # fmt: skip
        if spoilt_window:  # part of this batch's gradient is in .grad already: drop the step
            self._window.bad = True

    def _optimizer_step(self) -> dict[str, Any]:
        record = take_optimizer_step(self, self._window)
        self._window = StepWindow()
        return record

    # ------------------------------------------------------------------------------ the loop

    def fit(
        self,
        train_data: Any,
        *,
        epochs: int = 6,
        batch_size: int = 1,
        shuffle: bool = True,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = False,
        resume: bool | str | Path = False,
        resume_override: bool = False,
        max_steps: int | None = None,
        eval_data: Any = None,
        eval_step: Callable[[torch.Tensor, Mapping[str, Any], StepInfo], Any] | None = None,
    ) -> dict[str, Any]:
        """Train for ``epochs`` epochs (continuing from ``trainer.epoch``).

        Args:
            train_data: a map-style dataset of per-video items (sharded over ranks with a
                :class:`~sgs_tad.training.distributed.ShardedSampler`, order seeded by ``seed`` and
                the epoch, so a resume continues mid-epoch exactly), or an iterable of
                batches such as your own ``DataLoader`` (a mid-epoch resume then re-iterates
                it to skip the consumed batches, exact only if its order is deterministic).
            epochs: total number of epochs, counting those done before a resume.
            batch_size: videos per batch per rank (dataset input only).
            shuffle: shuffle the dataset each epoch (dataset input only).
            num_workers: ``DataLoader`` workers (dataset input only).
            collate_fn: default :func:`~sgs_tad.training.batches.collate_videos`.
            drop_last: drop the last incomplete batch (dataset input only).
            resume: ``True`` continues from the newest intact checkpoint in
                ``checkpoint_dir`` (if any: a warning says when there is none), a path from
                that file.
            resume_override: resume even if the checkpoint's ``settings`` differ (each
                difference is logged).
            max_steps: stop (with a checkpoint) after this many optimizer steps in total.
            eval_data: evaluated with ``eval_step`` after each epoch (see :meth:`evaluate`).
            eval_step: the per-batch evaluation callable.

        Returns:
            ``{"step", "epoch", "skipped_steps", "bad_videos", "stopped", "stop_signal",
            "phases", "peak_memory"}``: ``stopped`` is true when the run ended before
            ``epochs`` (a signal, :meth:`request_stop` or ``max_steps``), ``stop_signal`` the
            name of the signal (``"SIGTERM"``) that stopped it, else ``None``; ``peak_memory``
            is the run's peak so far in bytes, :meth:`~sgs_tad.training.metrics.PeakMemory.read`
            (allocated and reserved on CUDA, RSS on the CPU).
        """
        check_int("epochs", epochs, minimum=1)
        if (eval_data is None) != (eval_step is None):
            raise ValueError("pass both eval_data and eval_step, or neither.")
        with ExitStack() as locks:
            self._lock_outputs(locks)
            return self._fit(train_data, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                             num_workers=num_workers, collate_fn=collate_fn,
                             drop_last=drop_last, resume=resume,
                             resume_override=resume_override, max_steps=max_steps,
                             eval_data=eval_data, eval_step=eval_step)  # fmt: skip

    def _lock_outputs(self, locks: ExitStack) -> None:
        """Rank 0 locks the folders it writes for the run (two runs there would overwrite
        each other's checkpoints and metrics), then clears what a killed save left."""
        if self.rank != 0:
            return
        if self.checkpoints is not None:
            locks.enter_context(OutputLock(self.checkpoints.directory, what="checkpoint_dir"))
            self.checkpoints.remove_leftovers()
        if self.metrics.directory is not None:
            locks.enter_context(OutputLock(self.metrics.directory, what="log_dir"))

    def _fit(
        self,
        train_data: Any,
        *,
        epochs: int,
        batch_size: int,
        shuffle: bool,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Any] | None,
        drop_last: bool,
        resume: bool | str | Path,
        resume_override: bool,
        max_steps: int | None,
        eval_data: Any,
        eval_step: Callable[[torch.Tensor, Mapping[str, Any], StepInfo], Any] | None,
    ) -> dict[str, Any]:
        if resume:
            resume_trainer(self, resume, override=resume_override)
            # Records past the resumed step belong to the interrupted run: drop them.
            self.metrics.truncate_after(self.step)
        loader, sampler = make_loader(train_data, seed=self.seed, batch_size=batch_size,
                                      shuffle=shuffle, num_workers=num_workers,
                                      collate_fn=collate_fn, drop_last=drop_last)  # fmt: skip
        self.encoder.train()
        self.detector.train()
        self.stopped = False
        self._stop_requested = self._stop_agreed = False
        signals = StopOnSignal(self.request_stop, lambda: self._stop_requested)
        try:
            with signals:
                for cb in self.callbacks:
                    cb.on_fit_start(self)
                while self.epoch < epochs and not self.stopped:
                    self._run_epoch(loader, sampler, max_steps=max_steps)
                    if self.stopped:
                        break
                    self._end_epoch(eval_data, eval_step, batch_size)
        finally:
            self.metrics.close()
        if self.rank == 0:
            logger.info("time and memory per phase:\n%s", self.timer.format_summary())
            if self.bad_videos:
                ids = sorted({str(b["video_id"]) for b in self.bad_videos})
                logger.warning("%d batches skipped, unreadable videos: %s", len(ids), ids)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "skipped_steps": self.skipped_steps,
            "bad_videos": list(self.bad_videos),
            "stopped": self.stopped,
            "stop_signal": None if signals.received is None else signals.received.name,
            "phases": self.timer.summary(),
            "peak_memory": self.timer.memory.read(),
        }

    def _end_epoch(self, eval_data: Any, eval_step: Any, batch_size: int) -> None:
        metrics: dict[str, Any] = {}
        if eval_data is not None and eval_step is not None:
            metrics = self.evaluate(eval_data, eval_step, batch_size=batch_size)
            self.metrics.write({f"eval/{k}": v for k, v in metrics.items()}, step=self.step)
        for cb in self.callbacks:
            cb.on_epoch_end(self, self.epoch, metrics)
        self.epoch += 1
        self.epoch_iteration = 0
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            with warnings.catch_warnings():
                # After a resume at an epoch's last batch no optimizer.step() ran in this
                # process yet; torch's order warning does not apply.
                warnings.filterwarnings("ignore", message="Detected call of `lr_sched")
                self.scheduler.step()
        self._save()

    def _run_epoch(
        self, loader: Any, sampler: dist_utils.ShardedSampler | None, *, max_steps: int | None
    ) -> None:
        skip = self.epoch_iteration
        batch_size = getattr(loader, "batch_size", None) or 1
        if sampler is not None:
            sampler.set_epoch(self.epoch, skip=skip * batch_size)
            # Worker seeds come from the loader's generator: derive them from the epoch so a
            # resumed run hands the workers the seeds the uninterrupted run would have.
            loader.generator.manual_seed(self.seed * 100_003 + self.epoch)
            n_batches: int | None = skip + len(loader)
        else:
            if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(self.epoch)
            n_batches = len(loader) if hasattr(loader, "__len__") else None
        if n_batches is not None:
            dist_utils.check_same_on_all_ranks(n_batches, "the number of batches per epoch")
        if n_batches == 0:
            raise ValueError("train_data yields no batch; give it at least one video.")
        for cb in self.callbacks:
            cb.on_epoch_start(self, self.epoch)
        bar = ProgressBar(
            n_batches, desc=f"epoch {self.epoch}", enabled=self.progress and self.rank == 0
        )
        bar.update(skip)
        iterator = iter(loader)
        if sampler is None:
            for _ in range(skip):  # user loader: replay the consumed batches
                next(iterator)
        seen = window_start = skip
        try:
            for batch in iterator:
                self._iteration(batch)
                seen += 1
                bar.update(1)
                if seen - window_start < self.accumulation_steps and seen != n_batches:
                    continue
                self._finish_step(bar, seen)
                window_start = seen
                # Without a process group the local request is the agreement.
                local_stop = self.world_size == 1 and self._stop_requested
                at_max = max_steps is not None and self.step >= max_steps
                if self._stop_agreed or local_stop or at_max:
                    self.stopped = True
                    self._save()
                    return
            if seen == 0:
                raise ValueError("train_data yields no batch; give it at least one video.")
            if seen != window_start:  # iterable without len: flush the last window
                self._finish_step(bar, seen)
        finally:
            bar.close()

    def _finish_step(self, bar: ProgressBar, seen: int) -> None:
        record = self._optimizer_step()
        self.epoch_iteration = seen
        peak = record.get("peak_memory_bytes")
        bar.update(0, loss=f"{record['loss']:.4g}", snip_s=f"{record['snippets_per_s']:.1f}",
                   **({"mem": format_bytes(peak)} if peak is not None else {}))  # fmt: skip
        for cb in self.callbacks:  # before the write: a callback may add to the record
            cb.on_step_end(self, record)
        if self.step % self.log_every == 0:
            self.metrics.write(record, step=self.step)
        if self.checkpoint_every is not None and self.step % self.checkpoint_every == 0:
            self._save()

    # ---------------------------------------------------------------------------- evaluation

    def evaluate(
        self,
        data: Any,
        eval_step: EvalStep,
        *,
        batch_size: int = 1,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> dict[str, float]:
        """:func:`~sgs_tad.training.inference.evaluate` with this trainer's engine and detector.

        ``eval_step(feats, batch, info)`` returns per-batch metric means (or ``None``); the
        result is their batch-size-weighted mean over batches and ranks.
        """
        return evaluate(self.engine, self.detector, data, eval_step, batch_size=batch_size,
                        collate_fn=collate_fn, seed=self.seed,
                        autocast=self.autocast)  # fmt: skip

    # ---------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical resume needs (collective: call it on every rank)."""
        return trainer_state(self)

    def load_state_dict(
        self,
        state: Mapping[str, Any],
        *,
        source: str = "the checkpoint",
        strict_world_size: bool = True,
        override: bool = False,
    ) -> None:
        """Restore a :meth:`state_dict`: :func:`~sgs_tad.training.resume.restore_trainer_state`."""
        restore_trainer_state(
            self, state, source=source, strict_world_size=strict_world_size, override=override
        )

    def _save(self) -> Path | None:
        if self.checkpoints is None:
            return None
        state = self.state_dict()  # collective: every rank takes part
        if self.rank != 0:
            return None
        path = self.checkpoints.save(state, step=self.step)
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)
        return path
