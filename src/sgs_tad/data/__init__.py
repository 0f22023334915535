"""Data: ActivityNet-format annotations, lazy video snippet sources, and synthetic data sets.

PyAV and Pillow (``pip install 'sgs_tad[video]'``) are needed to read or generate videos and
frame folders; annotations and ``.npy`` features need neither.
"""

from sgs_tad.data.annotations import (
    AnnotationSet,
    VideoAnnotation,
    load_annotations,
    parse_annotations,
)
from sgs_tad.data.dataset import ActivityNetDataset, VideoBatch, VideoSample, collate_samples
from sgs_tad.data.failures import BadVideoLimit, TooManyBadVideosError
from sgs_tad.data.snippets import (
    CropBox,
    DecodedSource,
    MediaSnippetSource,
    SliceSource,
    draw_crop,
    snippet_frame_indices,
)
from sgs_tad.data.synthetic import (
    CLIP_CLASSES,
    SYNTHETIC_CLASSES,
    generate_synthetic_clips,
    generate_synthetic_dataset,
    read_synthetic_clips,
    synthetic_video_dir,
)
from sgs_tad.data.windows import WindowedDataset, sliding_windows, window_sample

__all__ = [
    "CLIP_CLASSES",
    "SYNTHETIC_CLASSES",
    "ActivityNetDataset",
    "AnnotationSet",
    "BadVideoLimit",
    "CropBox",
    "DecodedSource",
    "MediaSnippetSource",
    "SliceSource",
    "TooManyBadVideosError",
    "VideoAnnotation",
    "VideoBatch",
    "VideoSample",
    "WindowedDataset",
    "collate_samples",
    "draw_crop",
    "generate_synthetic_clips",
    "generate_synthetic_dataset",
    "load_annotations",
    "parse_annotations",
    "read_synthetic_clips",
    "sliding_windows",
    "snippet_frame_indices",
    "synthetic_video_dir",
    "window_sample",
]
