"""Peak memory, encoder FLOPs and time of SGS against naive end to end and checkpointing.

Each configuration runs in a fresh subprocess, so its peak memory is its own. For every method
it reports, relative to naive end-to-end training at the same N:

- encoder FLOPs of one iteration (a backward counted as two forwards), from the engine's
  counters;
- peak RSS growth of the process during training (CPU), or ``max_memory_allocated`` over the
  allocation before training (CUDA);
- the peak of live bytes saved for backward (activations; parameters excluded), counted with
  :class:`sgs_tad.plan.SavedBytesMeter`;
- wall time of one training iteration (min over the timed repeats).

Methods, all through the library's engines: ``naive`` (``EndToEnd``: all N snippets in one
graph), ``ckpt`` (``EndToEnd(checkpoint=True)``: ``torch.utils.checkpoint`` over micro-batches
of K, non-reentrant, as OpenTAD does), ``sgs`` (``SequentializedGradientSampler``) and, with
``--keep``, SGS with the sampled micro-batches' graphs kept (``keep_graphs="all"``). For the
VideoMAE encoders, ``--vit`` adds OpenTAD's full fine-tuning (``opentad``: all chunks in one
graph, per-block activation checkpointing, ``checkpoint_blocks=True``) and SGS with that
in-snippet checkpointing (``sgs+cp``).

``--amp fp16|bf16`` runs every method's step under autocast (fp16 with a GradScaler). On CUDA
each row warms up with one iteration at its own shapes, then reads ``max_memory_allocated``
(growth over the allocation before training) and ``max_memory_reserved`` (absolute); a
configuration that runs out of memory is reported as an "OOM" row.

``--predict-above BYTES`` bounds the run: a one-snippet probe of the planner
(:func:`sgs_tad.plan.measure_snippet_cost`, per encoder variant) predicts every configuration,
and those predicted to need more than BYTES (or whose method is in ``--predict-methods``) are
reported from the prediction, marked "predicted", instead of run.

To reproduce::

    python benchmarks/memory_time.py                     # toy 2D CNN grid (about 10 min, CPU)
    python benchmarks/memory_time.py --quick             # N ∈ {64, 128}, K = 4
    python benchmarks/memory_time.py --encoder tsm_r50 --n 16,32,64 --k 1,2,4,8 \\
        --ratios 0.1,0.3,1.0 --keep                      # the paper's Table 3, random init
    python benchmarks/memory_time.py --encoder r2plus1d_34 --device cuda ...   # on a GPU
    python benchmarks/memory_time.py --encoder tsm_r50 --shape 3,8,224,224 --n 16,64 --k 4 \
        --ratios 0.3,1.0 --amp fp16 --device cuda          # the GPU check's fp16 table
    python benchmarks/memory_time.py --encoder videomae_s --shape 3,16,160,160 --n 24,48 \
        --k 1 --ratios 0.3 --vit --repeats 0 --iterations 1 --predict-above 20e9 \
        --predict-methods naive,ckpt,opentad    # OpenTAD's THUMOS chunks, bounded CPU time

Each run writes its table to ``docs/benchmarks.md`` (one section per encoder and device) and
its rows to ``benchmarks/results/memory_time-<encoder>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- memory-time:begin -->", "<!-- memory-time:end -->"


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm1 = nn.GroupNorm(8, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


class Encoder(nn.Module):
    """A ResNet-style 2D encoder applied per frame (TSN style): snippet [3, L, H, W] -> [C]."""

    def __init__(self, c: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[Block(c) for _ in range(blocks)])
        self.head = nn.Linear(c, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, _, length, h, w = x.shape
        frames = x.transpose(1, 2).reshape(m * length, 3, h, w)
        y = self.blocks(torch.relu(self.stem(frames)))
        return self.head(y.mean((2, 3)).view(m, length, -1).mean(1))


class Detector(nn.Module):
    def __init__(self, c: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(c, 64, 3, padding=1), nn.ReLU(), nn.Conv1d(64, 2, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, 2, N]
        return self.net(feats.transpose(1, 2))


def build_encoder(cfg: dict) -> nn.Module:
    """The toy 2D CNN, or one of the library's encoders (random init, norm layers frozen)."""
    if cfg["encoder"] == "toy":
        return Encoder()
    from sgs_tad import freeze_norm_layers
    from sgs_tad.encoders import build_encoder as build
    from sgs_tad.encoders import freeze_encoder

    opts = {"checkpoint_blocks": True} if cfg.get("blocks_ckpt") else {}
    encoder = build(cfg["encoder"], **opts)
    if cfg.get("frozen_stages") is not None:  # the paper's fixed first stages, norm frozen
        return freeze_encoder(encoder, frozen_stages=cfg["frozen_stages"])
    return freeze_norm_layers(encoder)


def make_engine(cfg: dict, encoder: nn.Module) -> Any:
    """The method's engine: the library's EndToEnd (naive, checkpointing) or SGS."""
    from sgs_tad import EndToEnd, SequentializedGradientSampler

    if cfg["method"] in ("naive", "opentad"):
        return EndToEnd(encoder)  # opentad: blocks checkpointed inside the encoder
    if cfg["method"] == "ckpt":
        return EndToEnd(encoder, micro_batch_size=cfg["k"], checkpoint=True)
    k1 = cfg.get("encode_batch_size", "k")
    prefix = {} if cfg.get("prefix", True) else {"reuse_frozen_prefix": False}
    return SequentializedGradientSampler(
        encoder, micro_batch_size=cfg["k"], ratio=cfg["ratio"], keep_graphs=cfg.get("keep", 0),
        determinism_check=False, independence_check=False,
        encode_batch_size=None if k1 == "k" else k1, **prefix,
    )  # fmt: skip


def encoder_flops(cfg: dict, engine: Any) -> float:
    """Encoder FLOPs of one iteration relative to naive, a backward counted as 2 forwards.

    Naive runs N forwards and N backwards (3N); checkpointing adds N recomputing forwards
    (4N); SGS runs N no-grad forwards, re-runs the sampled snippets it did not keep, and
    back-propagates the sampled ones (read off the engine's counters).
    """
    n = cfg["n"]
    if cfg["method"] == "naive":
        return 1.0
    if cfg["method"] in ("ckpt", "opentad"):
        return 4 / 3
    st = engine.stats
    # In-snippet checkpointing runs each sampled snippet's forward once more in its backward.
    extra = st.snippets_sampled if cfg.get("blocks_ckpt") else 0
    return (st.snippets_encoded + st.snippets_recomputed + 2 * st.snippets_sampled + extra) / (
        3 * n
    )


def variant_name(cfg: dict) -> str:
    """``--predict-methods`` names: naive, opentad, ckpt, sgs, sgs+cp."""
    cp = cfg["method"] == "sgs" and cfg.get("blocks_ckpt")
    return cfg["method"] + ("+cp" if cp else "")


def probe(cfg: dict) -> dict:
    """The planner's one-snippet probe of the encoder; runs inside a fresh subprocess."""
    import dataclasses

    from sgs_tad.plan import measure_snippet_cost

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    encoder = build_encoder(cfg).to(cfg["device"])
    cost = measure_snippet_cost(
        encoder, cfg["shape"], micro_batch_size=1, device=cfg["device"], repeats=1
    )
    return dataclasses.asdict(cost)


PLANNER_METHOD = {"naive": "naive", "opentad": "naive", "ckpt": "checkpoint", "sgs": "sgs"}


def predicted(cfg: dict, cost: Any) -> dict:
    """A row from the planner's prediction (:func:`sgs_tad.plan.predict`), marked as such.

    Memory is the predicted peak without the parameters and the optimiser state (they exist
    before training, so the measured RSS growth does not contain them either)."""
    from sgs_tad.plan import predict

    p = predict(cost, n=cfg["n"], k=cfg["k"], ratio=cfg["ratio"],
                method=PLANNER_METHOD[cfg["method"]])  # type: ignore[arg-type]  # fmt: skip
    n, n_s = cfg["n"], p.sampled
    extra = n_s if cfg.get("blocks_ckpt") and cfg["method"] == "sgs" else 0
    flops = {"naive": 1.0, "opentad": 4 / 3, "ckpt": 4 / 3}.get(
        cfg["method"], (n + 3 * n_s + extra) / (3 * n)
    )
    growth = p.peak_bytes - cost.param_bytes - cost.optimizer_bytes
    return {**cfg, "peak_rss_mb": growth / 2**20, "saved_mb": p.saved_bytes / 2**20,
            "time_s": p.time_s, "flops": flops, "predicted": True,
            "predicted_peak_mb": p.peak_bytes / 2**20}  # fmt: skip


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def train_step(
    engine: Any,
    detector: nn.Module,
    snippets: torch.Tensor,
    target: torch.Tensor,
    *,
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """One training step of any method, leaving the (unscaled) gradients in ``.grad``.

    Autocast around the forwards for ``amp`` "fp16"/"bf16" (SGS's phase 3 re-enters phase 1's
    autocast state itself, checkpointing's recompute too); with a ``scaler`` (fp16) the scaled
    loss is back-propagated and ``optimizer`` is stepped through the scaler (unscale, inf
    check, step, update).
    """
    device_type = snippets.device.type
    with torch.autocast(device_type, dtype=AMP_DTYPES.get(amp), enabled=amp != "none"):
        feats = engine.encode(snippets)
        logits = detector(feats)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    engine.backward(snippets, feats)
    if scaler is not None and optimizer is not None:
        scaler.step(optimizer)
        scaler.update()


def run_one(cfg: dict) -> dict:
    """One method's row; runs inside the fresh subprocess.

    A CUDA out-of-memory error anywhere in it gives a row marked ``"oom"`` (its memory and
    time are then unknown), not a missing row.
    """
    try:
        return _run_one(cfg)
    except torch.OutOfMemoryError as err:
        return {**cfg, "oom": True, "error": str(err).splitlines()[0][:300]}


def _run_one(cfg: dict) -> dict:
    from sgs_tad.plan import SavedBytesMeter

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    encoder = build_encoder(cfg).to(device)
    n = cfg["n"]
    snippets = torch.randn(1, n, *cfg["shape"], device=device)
    with torch.no_grad():
        channels = encoder(snippets[0, :1]).shape[-1]
    detector = Detector(channels).to(device)
    target = torch.rand(1, 2, n, device=device)
    params = [*encoder.parameters(), *detector.parameters()]
    engine = make_engine(cfg, encoder)
    amp = cfg.get("amp", "none")
    # fp16: a GradScaler steps an optimizer (SGD without momentum and lr 0: no state, so no
    # memory of its own, and the weights stay as they are between iterations).
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    optimizer = torch.optim.SGD(params, lr=0.0) if scaler is not None else None

    def iteration() -> None:
        train_step(engine, detector, snippets, target, amp=amp, scaler=scaler,
                   optimizer=optimizer)  # fmt: skip
        for p in params:
            p.grad = None

    # Pay one-off costs (kernel selection, thread pools, allocator arenas) before the baseline,
    # so the measured growth is the activations' and not the runtime's. On CUDA a whole
    # iteration at this row's own shapes (cuDNN picks its algorithms per shape, the allocator
    # grows its pools for them), then the peaks are reset. On the CPU one snippet only: the
    # peak RSS cannot be reset, so a whole iteration would hide the growth to be measured.
    if device.type == "cuda":
        iteration()
    else:
        encoder(snippets[0, :1]).sum().backward()
    for p in params:
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = SavedBytesMeter(exclude=[*params, *encoder.buffers(), *detector.buffers()])

    # The memory window holds two iterations: SGS sizes its phase-1 calls on the first
    # (encode_batch_size="auto"), so the second is the steady state; the peak covers both.
    def timed_iteration() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        iteration()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with saved:
        times = [timed_iteration() for _ in range(cfg.get("iterations", 2))]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flops = encoder_flops(cfg, engine)
    times += [timed_iteration() for _ in range(cfg["repeats"])]
    out = {
        **cfg,
        "peak_rss_mb": (peak_rss - base_rss) / 1024,
        "saved_mb": saved.peak / 2**20,
        "time_s": min(times[1:]) if len(times) > 1 else times[0],
        "iterations": cfg.get("iterations", 2),
        "encode_batch_size": getattr(engine, "encode_batch_size", None),
        "flops": flops,
    }
    if device.type == "cuda":
        # Read after the memory window and the timed repeats (same shapes, same peaks).
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        out["cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        # Reserved: the caching allocator's blocks (fragmentation shows here), absolute.
        out["cuda_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return out


def configs(
    ns: list[int],
    ks: list[int],
    ratios: list[float],
    *,
    keep: bool,
    ckpt_ks: list[int],
    sweep_ks: list[int] = (),  # type: ignore[assignment]
    vit: bool = False,
    prefix_off: bool = False,
) -> list[dict]:
    """The grid: per N, naive, checkpointing at ``ckpt_ks``, SGS at ``ks`` × ``ratios`` (and
    kept graphs at γ < 1), plus SGS at ``sweep_ks`` and γ = 0.3 at the largest N only."""
    grid = []
    for n in ns:
        grid.append({"method": "naive", "n": n, "k": n, "ratio": 1.0})
        if vit:
            grid.append({"method": "opentad", "n": n, "k": n, "ratio": 1.0, "blocks_ckpt": True})
        for k in ckpt_ks:
            grid.append({"method": "ckpt", "n": n, "k": k, "ratio": 1.0})
        for k in ks:
            for r in ratios:
                grid.append({"method": "sgs", "n": n, "k": k, "ratio": r})
                if vit:
                    grid.append({"method": "sgs", "n": n, "k": k, "ratio": r, "blocks_ckpt": True})
                if keep and r < 1:
                    grid.append({"method": "sgs", "n": n, "k": k, "ratio": r, "keep": "all"})
                if prefix_off:
                    grid.append({"method": "sgs", "n": n, "k": k, "ratio": r, "prefix": False})
        if n == max(ns):
            for k in sweep_ks:
                if k not in ks:
                    grid.append({"method": "sgs", "n": n, "k": k, "ratio": 0.3})
    return grid


def environment() -> str:
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{numpy.__version__}; {platform.system()} {platform.release()}; CPU: {cpu} "
        f"({torch.get_num_threads()} threads available); GPU: {gpu}"
    )


def method_name(r: dict) -> str:
    if r["method"] == "sgs" and r.get("keep"):
        name = "SGS, kept graphs"
    elif r["method"] == "sgs" and r.get("prefix") is False:
        name = "SGS, phase 3 re-runs the frozen stages"
    elif r["method"] == "sgs" and r.get("blocks_ckpt"):
        name = "SGS + in-snippet checkpointing"
    else:
        name = {
            "naive": "naive end to end",
            "ckpt": "checkpoint",
            "sgs": "SGS",
            "opentad": "OpenTAD (per-block checkpointing, all chunks)",
        }[r["method"]]
    return name + (" **(predicted)**" if r.get("predicted") else "")


def planner(r: dict) -> str:
    """The planner's prediction of a measured row: saved bytes (and their ratio to the
    measured ones) and the predicted peak with parameters and AdamW state."""
    p = r.get("prediction") or (r if r.get("predicted") else None)
    if p is None:
        return "-"
    ratio = "" if r.get("predicted") else f" ({p['saved_mb'] / max(r['saved_mb'], 1e-9):.2f}×)"
    return f"{p['saved_mb']:.0f}{ratio}, {p['predicted_peak_mb']:.0f}"


def table(rows: list[dict]) -> str:
    """The markdown table; an out-of-memory row reads "OOM" where its numbers would be."""
    naive = {r["n"]: r for r in rows if r["method"] == "naive" and not r.get("oom")}
    cuda = any("cuda_peak_mb" in r for r in rows) or any(
        r.get("oom") and str(r.get("device", "")).startswith("cuda") for r in rows
    )
    mem_key = "cuda_peak_mb" if cuda else "peak_rss_mb"
    mem_name = "CUDA allocated peak MB (growth)" if cuda else "peak RSS MB"
    reserved = " CUDA reserved peak MB | × naive |" if cuda else ""
    lines = [
        f"| N | method | K | γ | encoder FLOPs × naive | {mem_name} | × naive |{reserved} "
        "saved-for-backward MB | × naive | time s | × naive | planner: saved MB, peak MB |",
        "|---|---|---|---|---|---|---|" + ("---|---|" if cuda else "") + "---|---|---|---|---|",
    ]
    for r in rows:
        base = naive.get(r["n"])
        k = "-" if r["method"] == "naive" else r["k"]
        g = f"{r['ratio']:.1f}" if r["method"] == "sgs" else "-"
        if r.get("oom"):
            cells = 4 if cuda else 2
            lines.append(f"| {r['n']} | {method_name(r)} | {k} | {g} | - |"
                         + " OOM | - |" * (cells // 2) + " OOM | - | OOM | - | - |")  # fmt: skip
            continue

        def rel(key: str, digits: int, r: dict = r, base: dict | None = base) -> str:
            if not base or key not in r or key not in base:
                return "-"
            return f"{r[key] / max(base[key], 1e-9):.{digits}f}"

        res = f" {r.get('cuda_reserved_mb', float('nan')):.0f} | {rel('cuda_reserved_mb', 3)} |"
        lines.append(
            f"| {r['n']} | {method_name(r)} | {k} | {g} | {r.get('flops', float('nan')):.2f} | "
            f"{r[mem_key]:.0f} | {rel(mem_key, 3)} |{res if cuda else ''} {r['saved_mb']:.1f} | "
            f"{rel('saved_mb', 3)} | {r['time_s']:.2f} | {rel('time_s', 2)} | {planner(r)} |"
        )
    return "\n".join(lines)


ENCODER_NOTE = {
    "toy": "ResNet-style 2D CNN per frame (3 residual blocks, 32 channels)",
    "small3d": "the main job's small 3D CNN (sgs_tad.encoders, random init)",
    "tsm_r50": "TSM ResNet-50 (sgs_tad.encoders, random init, BatchNorm frozen)",
    "r2plus1d_34": "R(2+1)D-34 (sgs_tad.encoders, random init, BatchNorm frozen)",
    "videomae_tiny": "VideoMAE tiny preset (sgs_tad.encoders, random init)",
    "videomae_s": "VideoMAE-S, 22 M parameters (sgs_tad.encoders, random init)",
    "videomae_b": "VideoMAE-B, 86 M parameters (sgs_tad.encoders, random init)",
}


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="toy", choices=sorted(ENCODER_NOTE))
    parser.add_argument(
        "--shape",
        type=ints,
        default=None,
        help="snippet shape C,L,H,W (default 3,4,32,32 toy; 3,8,112,112 others)",
    )
    parser.add_argument("--n", type=ints, default=None, help="snippets per video, e.g. 16,32,64")
    parser.add_argument("--k", type=ints, default=None, help="SGS micro-batch sizes K")
    parser.add_argument("--ratios", default="0.3,1.0", help="SGS ratios γ, e.g. 0.1,0.3,1.0")
    parser.add_argument("--ckpt-k", type=ints, default=None, help="checkpointing K (default: --k)")
    parser.add_argument("--keep", action="store_true", help="also SGS with kept graphs (γ < 1)")
    parser.add_argument(
        "--frozen-stages", type=int, default=None,
        help="freeze the stem and this many stages, as the paper (default: norm layers only)",
    )  # fmt: skip
    parser.add_argument(
        "--prefix-off", action="store_true",
        help="also SGS with phase 3 re-running the frozen stages (reuse_frozen_prefix=False)",
    )  # fmt: skip
    parser.add_argument(
        "--encode-batch-size",
        default="k",
        help="SGS phase-1 calls: 'k' (= K, the library's default and the paper's code), "
        "'auto' or an int",
    )
    parser.add_argument("--tag", default="", help="suffix of this run's docs section and JSON")
    parser.add_argument(
        "--sweep-k", type=ints, default=[], help="more SGS K at γ = 0.3, at the largest N only"
    )
    parser.add_argument("--quick", action="store_true", help="N ∈ {64, 128}, K = 4 only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="timed iterations after the memory run (0: time the memory run)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--amp",
        default="none",
        choices=["none", "fp16", "bf16"],
        help="mixed precision of every method's step: autocast, and a GradScaler for fp16",
    )
    parser.add_argument(
        "--iterations", type=int, default=2, help="iterations in the memory window (default 2)"
    )
    parser.add_argument(
        "--vit", action="store_true", help="add OpenTAD's way and SGS + in-snippet checkpointing"
    )
    parser.add_argument(
        "--predict-above",
        type=float,
        default=None,
        help="bytes: predict (from the planner's one-snippet probe) instead of running every "
        "configuration predicted to need more",
    )
    parser.add_argument(
        "--predict-methods",
        default="",
        help="methods always predicted: naive, opentad, ckpt, sgs, sgs+cp",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return
    toy = args.encoder == "toy"
    shape = args.shape or ([3, 4, 32, 32] if toy else [3, 8, 112, 112])
    ns = args.n or ([64, 128] if args.quick else [64, 128, 256, 512] if toy else [16, 32, 64])
    ks = args.k or ([4] if args.quick else [1, 4, 8] if toy else [1, 2, 4, 8])
    ratios = [float(r) for r in args.ratios.split(",")]
    grid = configs(ns, ks, ratios, keep=args.keep, ckpt_ks=args.ckpt_k or ks,
                   sweep_ks=args.sweep_k, vit=args.vit, prefix_off=args.prefix_off)  # fmt: skip
    rows = []
    costs: dict[bool, Any] = {}
    always = set(filter(None, args.predict_methods.split(",")))
    for cfg in grid:
        k1 = args.encode_batch_size
        cfg.update(device=args.device, repeats=args.repeats, threads=args.threads,
                   encoder=args.encoder, shape=shape, iterations=args.iterations, amp=args.amp,
                   encode_batch_size=int(k1) if k1.isdigit() else k1,
                   frozen_stages=args.frozen_stages)  # fmt: skip
        if args.predict_above is not None or always:
            from sgs_tad.engine.memory import SnippetCost

            variant = bool(cfg.get("blocks_ckpt"))
            if variant not in costs:
                res = subprocess.run([sys.executable, __file__, "--probe", json.dumps(cfg)],
                                     capture_output=True, text=True, check=True)  # fmt: skip
                fields = json.loads(res.stdout.strip().splitlines()[-1])
                fields["snippet_shape"] = tuple(fields["snippet_shape"])
                costs[variant] = SnippetCost(**fields)
            guess = predicted(cfg, costs[variant])
            too_big = args.predict_above is not None and (
                guess["predicted_peak_mb"] * 2**20 > args.predict_above
            )
            if too_big or variant_name(cfg) in always:
                rows.append(guess)
                print(f"predicted: {method_name(guess)} N={cfg['n']} K={cfg['k']} "
                      f"γ={cfg['ratio']}: peak {guess['predicted_peak_mb']:.0f} MB",
                      flush=True)  # fmt: skip
                continue
            cfg["prediction"] = guess
        res = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0 and "out of memory" in res.stderr.lower():
            # Out of memory outside the measured step (building the model, the input): the
            # row still says so.
            res.stdout = json.dumps({**cfg, "oom": True, "error": res.stderr[-300:]})
        elif res.returncode != 0:
            print(f"{cfg} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        if row.get("oom"):
            print(f"N={row['n']:4d} {method_name(row):18s} K={row['k']:3d} "
                  f"γ={row['ratio']:.1f} OOM: {row['error']}", flush=True)  # fmt: skip
            continue
        print(
            f"N={row['n']:4d} {method_name(row):18s} K={row['k']:3d} γ={row['ratio']:.1f} "
            f"peak={row.get('cuda_peak_mb', row['peak_rss_mb']):8.1f} MB "
            f"saved={row['saved_mb']:8.1f} MB time={row['time_s']:.2f} s",
            flush=True,
        )
    tag = f"{args.encoder}-{args.device.split(':')[0]}" + (f"-{args.tag}" if args.tag else "")
    tag += f"-{args.amp}" if args.amp != "none" else ""
    json_path = args.json or ROOT / "benchmarks" / "results" / f"memory_time-{tag}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=1))
    command = "python benchmarks/memory_time.py " + " ".join(sys.argv[1:])
    begin, end = (BEGIN, END) if tag == "toy-cpu" else (
        f"<!-- memory-time-{tag}:begin -->", f"<!-- memory-time-{tag}:end -->")  # fmt: skip
    section = (
        f"{begin}\n## {args.encoder} on {args.device}{' (' + args.tag + ')' if args.tag else ''}:"
        " SGS against naive and checkpointing\n\n"
        f"Measured by `{command.strip()}` on {args.device}, {args.threads} thread(s), one "
        f"video per iteration, snippet {'×'.join(map(str, shape))}, encoder: "
        f"{ENCODER_NOTE[args.encoder]}"
        + (
            f", stem and {args.frozen_stages} stage(s) frozen (`freeze_encoder`); SGS keeps "
            "their output for the sampled snippets (`reuse_frozen_prefix`, default 256 MB) "
            "unless the row says otherwise, which the FLOPs column (whole-encoder passes) "
            "does not show"
            if args.frozen_stages is not None
            else ""
        )
        + ", detector: 2-layer temporal conv, SGS phase-1 calls "
        f"`encode_batch_size={args.encode_batch_size!r}`, precision: "
        f"{'fp32' if args.amp == 'none' else args.amp + ' autocast'}"
        f"{' + GradScaler' if args.amp == 'fp16' else ''}. Memory on CPU is the "
        "growth of the peak RSS of a fresh process over its value before training (on CUDA, "
        "`max_memory_allocated` over the allocation before training, after a warm-up "
        "iteration at the row's shapes, and the absolute `max_memory_reserved`); an "
        "out-of-memory configuration reads OOM; saved-for-backward is "
        "the peak of live tensors saved by autograd. Encoder FLOPs count a backward as two "
        "forwards. Ratios are to naive at the same N.\n\n"
        f"Environment: {environment()}\n\n{table(rows)}\n{end}"
    )
    text = args.output.read_text() if args.output.exists() else "# Benchmarks\n"
    if begin in text:
        text = text.split(begin)[0] + section + text.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    args.output.write_text(text)
    print(table(rows))


if __name__ == "__main__":
    main()
