"""SGSTrainer: the end-to-end training loop around the three SGS phases.

Each iteration runs phase 1 (:meth:`~sgs_tad.SequentializedGradientSampler.encode`), the
detector and its loss with ``loss.backward()`` (phase 2), and phase 3
(:meth:`~sgs_tad.SequentializedGradientSampler.backward`), which *adds* the encoder's
gradient to ``.grad``. Then, once every ``accumulation_steps`` iterations, exactly **one**
``optimizer.step()`` updates encoder and detector together. (The original ETAD code steps
twice per iteration and relies on ``zero_grad(set_to_none=True)`` in between for
correctness; here gradients are zeroed once, after the step.)

Under ``torchrun`` the gradients are averaged over ranks by one explicit all-reduce per
step, not by DDP hooks: see :mod:`sgs_tad.distributed` for why (ranks may sample different
numbers of micro-batches, which would hang DDP).

Example:
    >>> import torch
    >>> from torch import nn
    >>> encoder, detector = nn.Linear(6, 4), nn.Linear(4, 1)
    >>> data = [{"snippets": torch.randn(5, 6), "target": torch.tensor(1.0)} for _ in range(4)]
    >>> def loss_fn(scores, batch):          # scores [B, N_max, 1]
    ...     return (scores.mean(dim=(1, 2)) - torch.stack(batch["target"])).square().mean()
    >>> trainer = SGSTrainer(encoder, detector, loss_fn=loss_fn, ratio=1.0)
    >>> summary = trainer.fit(data, epochs=2, batch_size=2)
    >>> trainer.step, summary["skipped_steps"]
    (4, 0)
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Literal, Union

import torch
from torch import nn

from . import distributed as dist_utils
from .batches import SNIPPETS_KEY, check_batch, count_snippets, count_videos, make_loader
from .callbacks import Callback
from .checkpoint import (
    CheckpointManager,
    capture_rng_state,
    check_resumable,
    load_checkpoint,
    model_fingerprint,
    parameter_shapes,
    restore_rng_state,
)
from .metrics import MetricsWriter, PhaseTimer, ProgressBar, format_bytes
from .optimization import default_optimizer, default_scheduler, trainable_parameters
from .sgs import SequentializedGradientSampler

__all__ = ["NO_GRAD_FEATURES_MESSAGE", "SGSTrainer"]

logger = logging.getLogger(__name__)

LossOutput = Union[torch.Tensor, Mapping[str, torch.Tensor]]
OptimizerFactory = Callable[[nn.Module, nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

NO_GRAD_FEATURES_MESSAGE = (
    "the detector's backward left no gradient on the encoder features (feats.grad is None),"
    " so the encoder would silently never train. The detector step cut the graph between the"
    " features and the loss: a .detach()/.data, a numpy round trip, or padding/batching under"
    " torch.no_grad. ActionFormer does the latter: its PtTransformer.preprocessing pads the"
    " batch under @torch.no_grad(); replace it on your model by an out-of-place padding that"
    " keeps the graph (examples/actionformer_e2e.py, docs/guide.md; sgs_tad.adapters."
    "enable_grad suffices for detectors whose no_grad method works out of place). If a frozen"
    " encoder is intended, pass ratio=0."
)


class SGSTrainer:
    """Train a video encoder and a detector end to end with SGS, on one device or many.

    The batch contract: each batch is a mapping with ``"snippets"`` (a tensor
    ``[B, N, *S]``, a list of ``[N_i, *S]`` tensors or of
    :class:`~sgs_tad.sources.SnippetSource`) plus whatever the loss needs; see
    :mod:`sgs_tad.batches`. The trainer never moves or re-wraps your modules: put them on
    their device first (one GPU per process under ``torchrun``).

    Args:
        encoder: maps snippets ``[M, *S]`` to features ``[M, C]``. A DDP-wrapped module is
            unwrapped (gradients are reduced by the trainer).
        detector: the detection model; its parameters are trained with ``detector_lr``.
        loss_fn: ``loss_fn(detector(feats), batch) -> loss`` with ``feats`` ``[B, N_max, C]``
            (padded; ``trainer.sgs.mask(feats)`` is the ``[B, N_max]`` validity mask).
        detector_step: instead of ``loss_fn``, ``detector_step(feats, batch) -> loss`` for
            detectors that build their own inputs and loss (ActionFormer). A loss may be a
            scalar tensor or a dict holding ``loss_key``; other scalar entries are logged.
        loss_key: the dict entry that is back-propagated.
        required_keys: batch keys the detector step needs; a batch without them is refused.
        micro_batch_size: K, snippets per encoder call.
        ratio: γ, the fraction of snippets whose gradient reaches the encoder (0: frozen).
        sampler: snippet sampler name or callable (see :mod:`sgs_tad.samplers`).
        sgs_options: other keyword options of
            :class:`~sgs_tad.SequentializedGradientSampler` (``pool``, ``grad_scale``,
            ``norm_policy``, ``determinism_check``, ...).
        optimizer: ``None`` for the paper's AdamW (see :mod:`sgs_tad.optimization`), or a
            factory ``optimizer(encoder, detector) -> torch.optim.Optimizer``.
        scheduler: ``None`` for step decay at ``lr_milestones``, or a factory
            ``scheduler(optimizer) -> LRScheduler``.
        scheduler_interval: step the scheduler after each ``"epoch"`` or optimizer ``"step"``.
        encoder_lr: encoder learning rate of the default optimizer (1e-6 TSM, 1e-7 R(2+1)D).
        detector_lr: detector learning rate of the default optimizer.
        weight_decay: weight decay of the default optimizer.
        lr_milestones: epochs after which the default scheduler multiplies the rate by
            ``lr_gamma``; ``()`` keeps it constant.
        lr_gamma: decay factor of the default scheduler.
        max_grad_norm: clip the global gradient norm (encoder and detector together).
        accumulation_steps: iterations whose gradients are summed before one optimizer step;
            each loss is divided by this number, so the step sees the mean.
        amp: ``"fp16"`` (autocast + GradScaler), ``"bf16"`` (autocast) or ``"none"``; the
            autocast covers all three phases (phase 3 replays phase 1's autocast state).
        freeze_norm: replace the encoder's BatchNorm layers by frozen ones
            (:func:`sgs_tad.freeze_norm_layers`), as in the paper.
        frozen_stages: encoder submodules whose parameters stop training
            (:func:`sgs_tad.freeze_stages`).
        nonfinite: on a NaN/inf loss or gradient, ``"skip"`` the optimizer step and count it
            (``trainer.skipped_steps``), or ``"raise"`` :class:`FloatingPointError`.
        seed: seeds the snippet sampler (``seed + rank``) and the data order (same on every
            rank). The global RNG is not seeded here; it is saved and restored by checkpoints.
        device: where inputs go; default: the device of the encoder's first parameter.
        checkpoint_dir: write checkpoints here (rank 0) at each epoch end and every
            ``checkpoint_every`` optimizer steps, and on a stop request.
        checkpoint_every: optimizer steps between checkpoints (``None``: epoch ends only).
        keep_last: checkpoints kept.
        log_dir: write ``metrics.jsonl`` here (rank 0).
        tensorboard: also write TensorBoard scalars to ``log_dir/tensorboard``.
        progress: show a tqdm progress bar (rank 0) with loss, snippets/s and peak memory.
        log_every: optimizer steps between metric records.
        callbacks: :class:`~sgs_tad.callbacks.Callback` objects.
    """

    def __init__(
        self,
        encoder: nn.Module,
        detector: nn.Module,
        *,
        loss_fn: Callable[[Any, Mapping[str, Any]], LossOutput] | None = None,
        detector_step: Callable[[torch.Tensor, Mapping[str, Any]], LossOutput] | None = None,
        loss_key: str = "final_loss",
        required_keys: Sequence[str] = (),
        micro_batch_size: int = 4,
        ratio: float = 0.3,
        sampler: str | Callable[..., torch.Tensor] = "random",
        sgs_options: Mapping[str, Any] | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        encoder_lr: float = 1e-6,
        detector_lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_milestones: Sequence[int] = (5,),
        lr_gamma: float = 0.1,
        max_grad_norm: float | None = None,
        accumulation_steps: int = 1,
        amp: Literal["none", "fp16", "bf16"] = "none",
        freeze_norm: bool = False,
        frozen_stages: Sequence[str] = (),
        nonfinite: Literal["skip", "raise"] = "skip",
        seed: int = 0,
        device: str | torch.device | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        keep_last: int = 3,
        log_dir: str | Path | None = None,
        tensorboard: bool = False,
        progress: bool = False,
        log_every: int = 10,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        for name, module in (("encoder", encoder), ("detector", detector)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be an nn.Module; got {type(module).__name__}.")
        if (loss_fn is None) == (detector_step is None):
            raise ValueError(
                "pass exactly one of loss_fn (loss_fn(detector(feats), batch) -> loss) and"
                " detector_step (detector_step(feats, batch) -> loss or loss dict); got "
                + ("both." if loss_fn is not None else "neither.")
            )
        choices: dict[str, tuple[Any, tuple[str, ...]]] = {
            "amp": (amp, ("none", "fp16", "bf16")),
            "nonfinite": (nonfinite, ("skip", "raise")),
            "scheduler_interval": (scheduler_interval, ("epoch", "step")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}.")
        for name, value in (("accumulation_steps", accumulation_steps), ("log_every", log_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}.")
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ValueError(
                f"checkpoint_every must be None or an int >= 1 (optimizer steps); got"
                f" {checkpoint_every!r}."
            )
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError("checkpoint_every needs checkpoint_dir=...; pass both.")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be None or > 0; got {max_grad_norm!r}.")

        self.rank = dist_utils.get_rank()
        self.world_size = dist_utils.get_world_size()
        encoder = dist_utils.unwrap_model(encoder)
        self.detector = dist_utils.unwrap_model(detector)
        if freeze_norm:
            from .norm import freeze_norm_layers

            encoder = freeze_norm_layers(encoder)
        if frozen_stages:
            from .norm import freeze_stages

            freeze_stages(encoder, frozen_stages)
        self.encoder = encoder
        if isinstance(ratio, (int, float)) and ratio > 0 and not trainable_parameters(encoder):
            raise ValueError(
                f"ratio={ratio} back-propagates into the encoder, but none of its parameters"
                " has requires_grad=True (all frozen). Pass ratio=0 for a frozen encoder (phase"
                " 3 is then skipped), or unfreeze some encoder stages."
            )
        # Every rank starts from rank 0's weights, as DDP would do when wrapping.
        dist_utils.broadcast_module_states([self.encoder, self.detector])

        if device is None:
            first = next(iter(self.encoder.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.loss_fn = loss_fn
        self.detector_step = detector_step
        self.loss_key = loss_key
        self.required_keys = tuple(required_keys)
        self.seed = seed
        options = dict(sgs_options or {})
        for key in ("micro_batch_size", "ratio", "sampler", "generator"):
            if key in options:
                raise ValueError(
                    f"sgs_options[{key!r}] is set by the trainer; pass {key}=... to SGSTrainer"
                    " instead (generator: use seed=...)."
                )
        options.setdefault("on_nonfinite_grad", "skip")
        options.setdefault("device", self.device)
        self.sgs = SequentializedGradientSampler(
            self.encoder,
            micro_batch_size=micro_batch_size,
            ratio=ratio,
            sampler=sampler,
            generator=torch.Generator().manual_seed(seed + self.rank),
            **options,
        )

        if optimizer is None:
            self.optimizer = default_optimizer(
                self.encoder,
                self.detector,
                encoder_lr=encoder_lr,
                detector_lr=detector_lr,
                weight_decay=weight_decay,
            )
        elif callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer(self.encoder, self.detector)
        else:
            raise TypeError(
                "optimizer must be a factory optimizer(encoder, detector) -> Optimizer (so the"
                f" trainer sees the modules it may have replaced); got {type(optimizer).__name__}."
                " Example: optimizer=lambda enc, det: torch.optim.SGD([*enc.parameters(),"
                " *det.parameters()], lr=0.01)."
            )
        if scheduler is None:
            self.scheduler: Any = (
                default_scheduler(self.optimizer, milestones=lr_milestones, gamma=lr_gamma)
                if lr_milestones
                else None
            )
        else:
            self.scheduler = scheduler(self.optimizer)
        self.scheduler_interval = scheduler_interval
        self.max_grad_norm = max_grad_norm
        self.accumulation_steps = accumulation_steps
        self.amp = amp
        self.scaler: Any = None
        if amp == "fp16":
            if hasattr(torch.amp, "GradScaler"):
                self.scaler = torch.amp.GradScaler(self.device.type)
            else:  # torch < 2.3: CUDA only
                self.scaler = torch.cuda.amp.GradScaler()
        self.nonfinite = nonfinite
        self.parameters = trainable_parameters(self.encoder, self.detector)
        self.reducer = dist_utils.GradientReducer(self.parameters, flags_device=self.device)
        self.checkpoints = (
            CheckpointManager(checkpoint_dir, keep_last=keep_last) if checkpoint_dir else None
        )
        self.checkpoint_every = checkpoint_every
        self.metrics = MetricsWriter(log_dir, tensorboard=tensorboard, enabled=self.rank == 0)
        self.progress = progress
        self.log_every = log_every
        self.callbacks = list(callbacks)
        self.timer = PhaseTimer(self.device)

        self.epoch = 0  # epoch in progress (0-based)
        self.epoch_iteration = 0  # batches of `epoch` already consumed
        self.step = 0  # optimizer steps taken (skipped ones included)
        self.skipped_steps = 0
        self.stopped = False
        self._stop_requested = False
        self._stop_agreed = False
        self._window: dict[str, Any] = {}
        self._reset_window()

    # ------------------------------------------------------------------------ public helpers

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

    # ------------------------------------------------------------------------- one iteration

    def _reset_window(self) -> None:
        self._window = {
            "bad": False,
            "loss_sum": 0.0,
            "losses": 0,
            "parts": {},
            "snippets": 0,
            "start": time.perf_counter(),
        }

    def _compute_loss(self, feats: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        if self.detector_step is not None:
            out = self.detector_step(feats, batch)
        else:
            assert self.loss_fn is not None
            out = self.loss_fn(self.detector(feats), batch)
        if isinstance(out, Mapping):
            if self.loss_key not in out:
                raise ValueError(
                    f"the detector step returned a dict with keys {sorted(out)} but no"
                    f" {self.loss_key!r}; pass loss_key=<the key to back-propagate>."
                )
            for key, value in out.items():
                if key != self.loss_key and isinstance(value, torch.Tensor) and value.numel() == 1:
                    parts = self._window["parts"]
                    parts[key] = parts.get(key, 0.0) + float(value.detach())
            out = out[self.loss_key]
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the loss must be a scalar tensor (or a dict holding one under"
                f" {self.loss_key!r}); got {got}."
            )
        return out.reshape(())

    def _iteration(self, batch: Any, window_size: int) -> None:
        batch = check_batch(batch, self.required_keys)
        snippets = batch[SNIPPETS_KEY]
        for cb in self.callbacks:
            cb.on_batch_start(self, batch)
        if self._window["bad"]:
            return  # this step is skipped anyway; don't spend compute on it
        with self.timer.phase("encode"), self.autocast():
            feats = self.sgs.encode(snippets)
        with self.timer.phase("detector"):
            with self.autocast():
                loss = self._compute_loss(feats, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                if self.nonfinite == "raise":
                    raise FloatingPointError(
                        f"non-finite loss {value} at epoch {self.epoch}, step {self.step}."
                        " Lower the learning rate, check the loss for log(0)/0-division, or"
                        " pass nonfinite='skip' to skip such steps."
                    )
                logger.warning(
                    "non-finite loss %s at step %d: the step is skipped", value, self.step
                )
                self._window["bad"] = True
                return
            scaled = loss / window_size
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if self.sgs.ratio > 0 and feats.grad is None:
            raise RuntimeError(NO_GRAD_FEATURES_MESSAGE)
        with self.timer.phase("update"):
            self.sgs.backward(snippets, feats)
        self._window["loss_sum"] += value
        self._window["losses"] += 1
        self._window["snippets"] += count_snippets(snippets)

    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.parameters if p.grad is not None]
        if not grads:
            return torch.zeros(())
        if self.max_grad_norm is not None:
            return nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        return torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
        )

    def _optimizer_step(self) -> dict[str, Any]:
        w = self._window
        with self.timer.phase("optimizer"):
            flags = self.reducer.reduce(
                [float(w["bad"]), float(self._stop_requested), w["loss_sum"], w["losses"]]
            )
            bad, stop, loss_sum, n_losses = flags
            # Stop only on the agreed (all-reduced) flag: a SIGTERM that reaches one rank
            # after the collective is honoured at the next step, on every rank together.
            # Without a process group the local request is the agreement.
            self._stop_agreed = stop > 0 or (self.world_size == 1 and self._stop_requested)
            record: dict[str, Any] = {"epoch": self.epoch}
            if bad > 0:
                self.skipped_steps += 1
            else:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                norm = self._grad_norm()
                record["grad_norm"] = float(norm)
                if not math.isfinite(record["grad_norm"]) and self.scaler is None:
                    if self.nonfinite == "raise":
                        raise FloatingPointError(
                            f"non-finite gradient norm at step {self.step}; pass"
                            " nonfinite='skip' to skip such steps."
                        )
                    self.skipped_steps += 1
                else:
                    for cb in self.callbacks:
                        cb.on_before_optimizer_step(self)
                    if self.scaler is not None:
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
            # Zero once, after the single step of this iteration window: every trainable
            # parameter, not only the optimizer's, or a parameter left out of a custom
            # optimizer would accumulate gradients forever.
            self.optimizer.zero_grad(set_to_none=True)
            for p in self.parameters:
                p.grad = None
        self.step += 1
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        elapsed = time.perf_counter() - w["start"]
        record.update(
            loss=loss_sum / n_losses if n_losses else float("nan"),
            lr=[g["lr"] for g in self.optimizer.param_groups],
            snippets_per_s=w["snippets"] / elapsed if elapsed > 0 else 0.0,
            skipped_steps=self.skipped_steps,
        )
        for key, total in w["parts"].items():
            record[key] = total / max(w["losses"], 1)
        peak = self.timer.peak_memory()
        if peak is not None:
            record["peak_memory_bytes"] = peak
        self._reset_window()
        return record

    # ------------------------------------------------------------------------------ the loop

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            logger.warning(
                "received %s: finishing the current step, saving a checkpoint and stopping"
                " (Ctrl-C again to abort now)",
                signal.Signals(signum).name,
            )
            self._stop_requested = True

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        return previous

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
        max_steps: int | None = None,
        eval_data: Any = None,
        eval_step: Callable[[torch.Tensor, Mapping[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """Train for ``epochs`` epochs (continuing from ``trainer.epoch``).

        Args:
            train_data: a map-style dataset of per-video items (sharded over ranks with a
                :class:`~sgs_tad.distributed.ShardedSampler`, order seeded by ``seed`` and
                the epoch, so a resume continues mid-epoch exactly), or an iterable of
                batches such as your own ``DataLoader`` (a mid-epoch resume then re-iterates
                it to skip the consumed batches, exact only if its order is deterministic).
            epochs: total number of epochs, counting those done before a resume.
            batch_size: videos per batch per rank (dataset input only).
            shuffle: shuffle the dataset each epoch (dataset input only).
            num_workers: ``DataLoader`` workers (dataset input only).
            collate_fn: default :func:`~sgs_tad.batches.collate_videos`.
            drop_last: drop the last incomplete batch (dataset input only).
            resume: ``True`` continues from the newest intact checkpoint in
                ``checkpoint_dir`` (if any), a path from that file.
            max_steps: stop (with a checkpoint) after this many optimizer steps in total.
            eval_data: evaluated with ``eval_step`` after each epoch (see :meth:`evaluate`).
            eval_step: the per-batch evaluation callable.

        Returns:
            ``{"step", "epoch", "skipped_steps", "stopped", "phases"}``.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1; got {epochs!r}.")
        if (eval_data is None) != (eval_step is None):
            raise ValueError("pass both eval_data and eval_step, or neither.")
        if resume is True:
            if self.checkpoints is None:
                raise ValueError("resume=True needs checkpoint_dir=... in SGSTrainer.")
            found = self.checkpoints.load_latest()
            if found is not None:
                self.load_state_dict(found[0], source=str(found[1]))
        elif resume:
            self.load_state_dict(load_checkpoint(resume), source=str(resume))
        loader, sampler = make_loader(
            train_data,
            seed=self.seed,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last,
        )
        self.encoder.train()
        self.detector.train()
        previous_handlers = self._install_signal_handlers()
        self.stopped = False
        self._stop_requested = self._stop_agreed = False
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            while self.epoch < epochs and not self.stopped:
                self._run_epoch(loader, sampler, max_steps=max_steps)
                if self.stopped:
                    break
                metrics: dict[str, Any] = {}
                if eval_data is not None and eval_step is not None:
                    metrics = self.evaluate(eval_data, eval_step, batch_size=batch_size)
                    self.metrics.write(
                        {f"eval/{k}": v for k, v in metrics.items()}, step=self.step
                    )
                    self.encoder.train()
                    self.detector.train()
                for cb in self.callbacks:
                    cb.on_epoch_end(self, self.epoch, metrics)
                self.epoch += 1
                self.epoch_iteration = 0
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    with warnings.catch_warnings():
                        # After a resume at an epoch's last batch no optimizer.step() ran in
                        # this process yet; torch's order warning does not apply.
                        warnings.filterwarnings("ignore", message="Detected call of `lr_sched")
                        self.scheduler.step()
                self._save()
        finally:
            for sig, old in previous_handlers.items():
                signal.signal(sig, old)
            self.metrics.close()
        if self.rank == 0:
            logger.info("time and memory per phase:\n%s", self.timer.format_summary())
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "skipped_steps": self.skipped_steps,
            "stopped": self.stopped,
            "phases": self.timer.summary(),
        }

    def _run_epoch(
        self,
        loader: Any,
        sampler: dist_utils.ShardedSampler | None,
        *,
        max_steps: int | None,
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
        seen = skip
        window_start = skip
        try:
            for batch in iterator:
                if n_batches is not None:
                    window = min(self.accumulation_steps, n_batches - window_start)
                else:
                    window = self.accumulation_steps
                self._iteration(batch, window)
                seen += 1
                bar.update(1)
                if seen - window_start < window and seen != n_batches:
                    continue
                record = self._optimizer_step()
                self.epoch_iteration = window_start = seen
                self._after_step(record, bar)
                local_stop = self.world_size == 1 and self._stop_requested
                if (
                    self._stop_agreed
                    or local_stop
                    or (max_steps is not None and self.step >= max_steps)
                ):
                    self.stopped = True
                    self._save()
                    return
            if seen == 0:
                raise ValueError("train_data yields no batch; give it at least one video.")
            if seen != window_start:  # iterable without len: flush the last window
                record = self._optimizer_step()
                self.epoch_iteration = seen
                self._after_step(record, bar)
        finally:
            bar.close()

    def _after_step(self, record: dict[str, Any], bar: ProgressBar) -> None:
        peak = record.get("peak_memory_bytes")
        bar.update(
            0,
            loss=f"{record['loss']:.4g}",
            snip_s=f"{record['snippets_per_s']:.1f}",
            **({"mem": format_bytes(peak)} if peak is not None else {}),
        )
        if self.step % self.log_every == 0:
            self.metrics.write(record, step=self.step)
        for cb in self.callbacks:
            cb.on_step_end(self, record)
        if self.checkpoint_every is not None and self.step % self.checkpoint_every == 0:
            self._save()

    # ---------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(
        self,
        data: Any,
        eval_step: Callable[[torch.Tensor, Mapping[str, Any]], Any],
        *,
        batch_size: int = 1,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> dict[str, float]:
        """Run ``eval_step(feats, batch)`` on every batch with the modules in eval mode.

        ``feats`` are the encoder features ``[B, N_max, C]`` (``trainer.sgs.mask(feats)`` is
        the mask). ``eval_step`` returns a mapping of per-batch metric means (or ``None``, e.g.
        when it collects predictions for an mAP computed afterwards); the result is their
        mean weighted by batch size, over batches and ranks. Train/eval modes and the snippet
        sampler's random state are restored afterwards.
        """
        loader, sampler = make_loader(
            data,
            seed=self.seed,
            batch_size=batch_size,
            shuffle=False,
            num_workers=0,
            collate_fn=collate_fn,
            drop_last=False,
        )
        if sampler is not None:
            sampler.set_epoch(0)
        modes = (self.encoder.training, self.detector.training)
        sgs_state = self.sgs.state_dict()
        self.encoder.eval()
        self.detector.eval()
        sums: dict[str, float] = {}
        weight = 0.0
        try:
            for batch in loader:
                batch = check_batch(batch)
                with self.autocast():
                    feats = self.sgs.encode(batch[SNIPPETS_KEY]).detach()
                    out = eval_step(feats, batch)
                b = float(count_videos(batch[SNIPPETS_KEY]))
                weight += b
                for key, value in (out or {}).items():
                    sums[key] = sums.get(key, 0.0) + float(value) * b
        finally:
            self.encoder.train(modes[0])
            self.detector.train(modes[1])
            self.sgs.load_state_dict(sgs_state)
        keys = sorted(sums)
        totals = dist_utils.GradientReducer([], flags_device=self.device).reduce(
            [weight, *(sums[k] for k in keys)]
        )
        return {k: v / totals[0] for k, v in zip(keys, totals[1:])} if totals[0] else {}

    # ---------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical resume needs (collective: call it on every rank)."""
        per_rank = dist_utils.gather_objects(
            {"rng": capture_rng_state(), "sgs": self.sgs.state_dict()}
        )
        return {
            "format": "sgs_tad.trainer",
            "version": 1,
            "fingerprint": self.fingerprint(),
            "shapes": parameter_shapes({"encoder": self.encoder, "detector": self.detector}),
            "world_size": self.world_size,
            "encoder": self.encoder.state_dict(),
            "detector": self.detector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scheduler_type": _type_name(self.scheduler),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "per_rank": per_rank,
            "epoch": self.epoch,
            "epoch_iteration": self.epoch_iteration,
            "step": self.step,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(
        self,
        state: Mapping[str, Any],
        *,
        source: str = "the checkpoint",
        strict_world_size: bool = True,
    ) -> None:
        """Restore a :meth:`state_dict` (from :func:`~sgs_tad.checkpoint.load_checkpoint`).

        Args:
            state: the saved state.
            source: where it came from, for messages.
            strict_world_size: refuse a checkpoint written with another number of ranks.
                With ``False``, weights, optimizer, scheduler, scaler and step counters are
                restored, but the data order and per-rank random streams cannot be: the
                interrupted epoch restarts from its first batch with the new sharding, and the
                run is no longer bit-identical to an uninterrupted one.

        Raises:
            ValueError: the checkpoint is for a different model, or the world size changed.
        """
        same_world = check_resumable(
            state,
            modules={"encoder": self.encoder, "detector": self.detector},
            world_size=self.world_size,
            source=source,
            strict_world_size=strict_world_size,
        )
        saved_scheduler = state.get("scheduler_type")  # absent in older checkpoints
        if saved_scheduler is not None and saved_scheduler != _type_name(self.scheduler):
            raise ValueError(
                f"{source} was written with the learning-rate scheduler {saved_scheduler}, but "
                f"this trainer has {_type_name(self.scheduler)}; its state cannot be restored "
                "into another scheduler. Resume with the schedule it was trained with, or use a "
                "fresh checkpoint_dir."
            )
        self.encoder.load_state_dict(state["encoder"])
        self.detector.load_state_dict(state["detector"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        if same_world:
            mine = state["per_rank"][self.rank]
            restore_rng_state(mine["rng"])
            self.sgs.load_state_dict(mine["sgs"])
            self.epoch_iteration = int(state["epoch_iteration"])
        else:
            logger.warning(
                "world size changed (%s -> %d): epoch %d restarts from its first batch",
                state["world_size"],
                self.world_size,
                self.epoch,
            )
            self.epoch_iteration = 0
        logger.info("resumed from %s at epoch %d, step %d", source, self.epoch, self.step)

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


def _type_name(obj: Any) -> str | None:
    """``module.QualName`` of ``obj``'s type (``None`` for ``None``): tells schedulers apart."""
    if obj is None:
        return None
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
