"""A ``torch.compile``d encoder that draws random numbers cannot be replayed: refuse it.

SGS replays phase 1's RNG state in phase 3 so that dropout draws the same masks (see
``docs/transparency.md``). A compiled encoder runs phase 1 (no grad) and phase 3 (grad) as two
different compiled graphs; Inductor draws its dropout masks from its own seeds and kernels
(``fallback_random=False``, the default), so restoring the generator does not reproduce phase
1's masks and the encoder gradient is silently wrong. Until that is made exact, such an
encoder is refused on the first batch, with the ways out in the message.
"""

from __future__ import annotations

from torch import nn

__all__ = ["check_replayable", "is_compiled"]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout)  # fmt: skip


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` or one of its submodules is compiled: ``torch.compile(module)``
    (an ``OptimizedModule``, which has ``_orig_mod``) or ``module.compile()`` (in place)."""
    return any(
        hasattr(m, "_orig_mod") or getattr(m, "_compiled_call_impl", None) is not None
        for m in module.modules()
    )


def check_replayable(encoder: nn.Module, *, drew: bool, preserve_rng_state: bool) -> bool:
    """Return ``drew`` (phase 1 advanced the global RNG); refuse a compiled encoder that draws
    random numbers (``drew``, or a dropout layer in training mode) while RNG replay is on.

    Raises:
        ValueError: naming the dropout layers and the fixes.
    """
    if not preserve_rng_state or not is_compiled(encoder):
        return drew
    active = [name or type(m).__name__ for name, m in encoder.named_modules()
              if isinstance(m, _DROPOUT) and m.training and m.p > 0]  # fmt: skip
    if drew or active:
        raise ValueError(
            "the encoder is compiled (torch.compile) and draws random numbers"
            f"{f' (dropout: {active[:4]})' if active else ''}: phases 1 and 3 run different"
            " compiled graphs whose random streams differ, so SGS cannot replay phase 1's"
            " dropout masks and the encoder gradient would be wrong. Pass the uncompiled"
            " encoder (compiled_encoder._orig_mod), or switch its dropout off (p=0 or"
            " .eval() on the dropout layers)."
        )
    return drew
