"""Writing frames to video files with PyAV (imported at the point of use)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


def _pick_codec(codec: str | None) -> str:
    import av

    candidates = [codec] if codec is not None else ["mpeg4", "libx264"]
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise ValueError(
        f"no usable video encoder among {candidates!r} in this PyAV/FFmpeg build; "
        f"available: pass codec= one of {sorted(c for c in av.codecs_available)[:20]!r}..."
    )


def _encode(path: Path, frames: np.ndarray, *, fps: int, codec: str) -> None:
    """Encode ``uint8 [F, H, W, 3]`` frames; key frame every second so that seeking is cheap."""
    import av

    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream(codec, rate=Fraction(fps))
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # threads=1: byte-identical output for the same frames (and the box is shared).
            stream.options = {
                "crf": "10",
                "preset": "veryfast",
                "g": str(fps),
                "threads": "1",
                # The "threads" option alone still left x264's lookahead threaded here (one
                # file in a few differed between identical runs); x264-params pins both.
                "x264-params": "threads=1:lookahead-threads=1",
            }
            stream.codec_context.thread_count = 1
            stream.codec_context.thread_type = "NONE"
        else:
            stream.bit_rate = 4_000_000
            stream.options = {"g": str(fps)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
