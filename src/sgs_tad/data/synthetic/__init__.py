"""Synthetic untrimmed videos with known action segments, written in the ActivityNet layout.

The default data set of the examples: small enough to generate in seconds and learn on a CPU in
minutes, built so that *what* happens is carried by motion, not by appearance.

Every video shows, on a textured background that drifts (a camera pan), two identical bright
discs (the same in every video): the **actor** and a **distractor**. The distractor glides at
constant speed and bounces off the borders for the whole video. The actor rests (drifting
slowly) except during action instances, where it performs its class's pattern:

============  ==========================================================
class         pattern during an instance (period and amplitude vary)
============  ==========================================================
``swing_h``   fast left-right oscillation
``swing_v``   fast up-down oscillation
``orbit``     circular motion (clockwise)
``pulse``     the shape grows and shrinks in place
``hop``       repeated hops upwards
``orbit_ccw`` circular motion (counter-clockwise)
============  ==========================================================

Appearance is the same for all classes and videos, so a classifier has to look at motion (and
cannot memorise a video's look, which matters with a few dozen training videos), and the action
boundaries are where the actor starts and stops moving. Instance count (1-4),
total coverage (5-80 % of the video) and video length are drawn per video, as in ActivityNet;
``instances="many"`` draws many short instances instead, as in THUMOS (one per 2.5-5 s of
video, 0.75-2.5 s each; with ``classes_per_video="mixed"`` a video holds several classes).

Files written under ``root``::

    root/annotations.json       # ActivityNet format, plus a "sgs_tad_synthetic" config block
    root/videos/v_<id>.mp4      # H.264 (libx264), or MPEG-4 Part 2 where libx264 is missing

Randomness: video ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` (rendering is numpy
code), so a video does not change when ``num_videos`` does, and nothing touches global RNG.
Generation is cached: when ``annotations.json`` exists with the same config fingerprint and all
videos are present, nothing is written.

Modules: :mod:`~sgs_tad.data.synthetic.untrimmed` (the detection set: config, rendering of a
video, writer), :mod:`~sgs_tad.data.synthetic.clips` (the trimmed-clip set for pretraining),
:mod:`~sgs_tad.data.synthetic.motions` (the classes and their motions),
:mod:`~sgs_tad.data.synthetic.drawing` (backgrounds, tracks, compositing),
:mod:`~sgs_tad.data.synthetic.layout` (placing instances in time) and
:mod:`~sgs_tad.data.synthetic.encoding` (writing videos).

Example:
    >>> import tempfile
    >>> from sgs_tad.data import load_annotations
    >>> path = generate_synthetic_dataset(tempfile.mkdtemp(), num_videos=2, min_duration=2.0,
    ...                                   max_duration=2.0, size=32)
    >>> sorted(p.name for p in synthetic_video_dir(path).iterdir())
    ['v_synth_0000.mp4', 'v_synth_0001.mp4']
    >>> [v.subset for v in load_annotations(path).videos]
    ['training', 'training']
"""

from __future__ import annotations

# The names of __all__, plus (importable from here as before the split into modules) the
# generator versions and two private helpers that the tests use.
from sgs_tad.data.synthetic.clips import CLIP_GENERATOR_VERSION as CLIP_GENERATOR_VERSION
from sgs_tad.data.synthetic.clips import (
    SyntheticClipConfig,
    generate_synthetic_clips,
    read_synthetic_clips,
    render_clip,
)
from sgs_tad.data.synthetic.encoding import _encode as _encode
from sgs_tad.data.synthetic.layout import _many_segments as _many_segments
from sgs_tad.data.synthetic.motions import CLIP_CLASSES, SYNTHETIC_CLASSES
from sgs_tad.data.synthetic.untrimmed import GENERATOR_VERSION as GENERATOR_VERSION
from sgs_tad.data.synthetic.untrimmed import (
    SyntheticConfig,
    generate_synthetic_dataset,
    render_video,
    synthetic_video_dir,
)

__all__ = [
    "CLIP_CLASSES",
    "SYNTHETIC_CLASSES",
    "SyntheticClipConfig",
    "SyntheticConfig",
    "generate_synthetic_clips",
    "generate_synthetic_dataset",
    "read_synthetic_clips",
    "render_clip",
    "render_video",
    "synthetic_video_dir",
]
