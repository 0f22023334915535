"""Feature extraction: one ``.npy`` ``float32 [T, C]`` file per video, from a video encoder.

Runs the engine's phase 1 alone (:meth:`~sgs_tad.SequentializedGradientSampler.encode_features`:
no graph, micro-batch by micro-batch, decoding only the snippets of the current call) over every
video and writes ``<output>/<prefix><video_id>.npy``. That is the layout the main job reads with
``examples/etad_anet.py --features DIR`` (:class:`~sgs_tad.data.ActivityNetDataset` in
``mode="features"`` looks for ``v_<id>.npy`` and ``<id>.npy``), and the one ActionFormer's
ActivityNet and THUMOS data sets read (``<feat_folder>/<file_prefix><video_id><file_ext>``,
``.npy`` ``[T, C]``). See ``docs/extract.md``.

From the command line::

    python -m sgs_tad.extract --checkpoint outputs/etad_anet/model.pt \\
        --annotations data/synthetic/annotations.json --data-root data/synthetic/videos \\
        --output features/
    python -m sgs_tad.extract --encoder tsm_r50 --weights tsm_k400.pth \\
        --videos /data/videos --num-snippets 128 --snippet-length 8 --size 224 --output feats/

Extraction is resumable: ``<output>/extract_manifest.json`` (:mod:`sgs_tad.extract.manifest`)
records the settings and each file's shape and size, so a rerun skips the files that are done,
extracts again those that are empty or truncated, and refuses a folder made with other settings
unless ``--overwrite``. Files are written to an unpredictable temporary name and renamed, so a
killed run never leaves a truncated ``.npy``; a video that cannot be read is logged, counted
and skipped without stopping the others. Exit status: 0 when every video has its
file, 1 when some failed, 2 for bad arguments.

Example:
    >>> import tempfile, numpy as np, torch
    >>> from torch import nn
    >>> from sgs_tad.engine.sources import TensorSource
    >>> out = tempfile.mkdtemp()
    >>> enc = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    >>> summary = extract_features(enc, {"a": TensorSource(torch.randn(5, 6))}, out,
    ...                            progress=False)
    >>> summary["written"], summary["failed"], np.load(f"{out}/a.npy").shape
    (1, 0, (5, 4))
"""

from sgs_tad.extract.cli import main
from sgs_tad.extract.features import (
    SnippetOptions,
    VideoInput,
    extract_features,
    load_checkpoint_encoder,
    videos_from_annotations,
    videos_in_folder,
)

__all__ = [
    "SnippetOptions",
    "VideoInput",
    "extract_features",
    "load_checkpoint_encoder",
    "main",
    "videos_from_annotations",
    "videos_in_folder",
]
