"""Predicted training memory of VideoMAE S/B/L/H/g at AdaTAD's settings; LoRA's optimizer state.

The planner (:func:`sgs_tad.plan.predict`) turns a one-chunk probe
(:func:`sgs_tad.plan.measure_snippet_cost`, one 16-frame chunk, float32) into the peak of a
training step over N chunks. Probing L, H and g at full depth on a CPU is slow, so each model is
probed at depth 1 and depth 2 (the same widths, the same input) and every per-chunk cost is
extended linearly in the depth: ``c(D) = c(1) + (D - 1) * (c(2) - c(1))`` (the blocks are
identical, so saved bytes and times grow by one block's share each; the no-grad peak is one
block's transient and stays flat). ``--check s,b`` probes those models at full depth as well,
and the table says how far the extension is from them (it must be within 10 %).

Methods, N chunks of one video, K = 1 (activations = saved + workspace of the planner, plus the
recomputation that the planner does not see on a CPU):

* naive: all chunks in one graph.
* OpenTAD: all chunks in one graph with per-block checkpointing (AdaTAD's ``fullft``); the
  backward recomputes one block for all N chunks at once, so one block's saved activations of
  N chunks are added.
* temporal checkpointing: one chunk at a time, inputs kept (planner ``checkpoint``, K = 1).
* SGS: K = 1, γ = 0.3 (planner ``sgs``).
* SGS + in-snippet checkpointing: the same with ``checkpoint_blocks=True``; one block of one
  chunk recomputed is added.

Parameters, gradients and AdamW state are exact (counted on the full model built on the meta
device), float32. ``--lora`` measures LoRA (peft, rank 16 on qkv/proj/fc1/fc2) against full
fine-tuning: the bytes of AdamW's state after one step, and the probe of the LoRA model.

Results go to ``benchmarks/results/vit_memory.json`` (probes are cached there: a rerun with
other ``--models`` adds to it) and to the ``vit-memory`` section of ``docs/benchmarks.md``::

    python benchmarks/vit_memory.py --models s,b --check s,b --lora s,b
    python benchmarks/vit_memory.py --models l,h,g --check l
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vit_memory.json"
BEGIN, END = "<!-- vit-memory:begin -->", "<!-- vit-memory:end -->"
CHUNK_FRAMES = 16
SIZES = (160, 224)
CHUNKS = (48, 96)  # 768 and 1536 frames
RATIO = 0.3
GB = 1e9
MIB = 2**20
LORA_TARGETS = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
NAMES = {"tiny": "VideoMAE-tiny", "s": "VideoMAE-S", "b": "VideoMAE-B", "l": "VideoMAE-L",
         "h": "VideoMAE-H", "g": "VideoMAEv2-g"}  # fmt: skip


def build(model: str, **opts: Any) -> nn.Module:
    from sgs_tad.encoders import build_encoder

    return build_encoder(f"videomae_{model}", **opts)  # type: ignore[arg-type]


def depth_of(model: str) -> int:
    from sgs_tad.encoders.videomae import VIDEOMAE_PRESETS

    return int(VIDEOMAE_PRESETS[model]["depth"])


def fixed_bytes(model: str) -> dict[str, int]:
    """Parameters (and buffers), gradients and AdamW state of the full model, float32."""
    with torch.device("meta"):
        enc = build(model)
    params = sum(p.numel() for p in enc.parameters())
    buffers = sum(b.numel() for b in enc.buffers())
    return {"params": params, "param_bytes": 4 * (params + buffers), "grad_bytes": 4 * params,
            "optimizer_bytes": 8 * params}  # fmt: skip


def probe(model: str, size: int, depth: int, cp: bool, lora: bool = False) -> dict[str, Any]:
    from sgs_tad.plan import measure_snippet_cost

    torch.manual_seed(0)
    enc = build(model, depth=depth, checkpoint_blocks=cp)
    if lora:
        enc = with_lora(enc)
    t0 = time.perf_counter()
    cost = measure_snippet_cost(enc, (3, CHUNK_FRAMES, size, size), micro_batch_size=1,
                                repeats=1)  # fmt: skip
    return {**dataclasses.asdict(cost), "probe_s": time.perf_counter() - t0}


def with_lora(enc: nn.Module, rank: int = 16) -> nn.Module:
    try:
        import peft
    except ImportError as err:  # optional: only --lora needs it
        raise SystemExit(f"--lora needs peft: pip install peft ({err})") from err
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS)
    return peft.get_peft_model(enc, config)


def optimizer_state_bytes(model: str, lora: bool, size: int) -> dict[str, int]:
    """Bytes of AdamW's state after one step on one chunk, and the trainable parameters."""
    torch.manual_seed(0)
    enc = build(model)
    if lora:
        enc = with_lora(enc)
    trainable = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    enc(torch.randn(1, 3, CHUNK_FRAMES, size, size)).square().mean().backward()
    opt.step()
    # exp_avg and exp_avg_sq per parameter; the 0-d step counters are not counted
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)  # fmt: skip
    return {"trainable": sum(p.numel() for p in trainable), "optimizer_state_bytes": state,
            "grad_bytes": sum(4 * p.numel() for p in trainable)}  # fmt: skip


def key(model: str, size: int, depth: int | str, cp: bool, lora: bool = False) -> str:
    return f"{model}-{size}-d{depth}-{'cp' if cp else 'nocp'}{'-lora' if lora else ''}"


def extended(probes: dict[str, Any], model: str, size: int, cp: bool) -> dict[str, float]:
    """Per-chunk costs of the full-depth model from its depth-1 and depth-2 probes."""
    one, two = probes[key(model, size, 1, cp)], probes[key(model, size, 2, cp)]
    depth = depth_of(model)
    out = {}
    for field in ("saved_bytes", "nograd_peak_bytes", "fwd_nograd_s", "fwd_grad_s", "bwd_s"):
        out[field] = one[field] + (depth - 1) * (two[field] - one[field])
    out["block_saved_bytes"] = two["saved_bytes"] - one["saved_bytes"]
    out["input_bytes"], out["feature_bytes"] = one["input_bytes"], one["feature_bytes"]
    return out


def cost_of(per_chunk: dict[str, float], fixed: dict[str, int]) -> Any:
    from sgs_tad.engine.memory import SnippetCost

    return SnippetCost(snippet_shape=(3, CHUNK_FRAMES), micro_batch_size=1, device="cpu",
                       input_bytes=int(per_chunk["input_bytes"]),
                       feature_bytes=int(per_chunk["feature_bytes"]),
                       saved_bytes=per_chunk["saved_bytes"],
                       nograd_peak_bytes=per_chunk["nograd_peak_bytes"], train_peak_bytes=None,
                       fwd_nograd_s=per_chunk["fwd_nograd_s"],
                       fwd_grad_s=per_chunk["fwd_grad_s"], bwd_s=per_chunk["bwd_s"],
                       param_bytes=fixed["param_bytes"], grad_bytes=fixed["grad_bytes"],
                       optimizer_bytes=fixed["optimizer_bytes"])  # fmt: skip


def activations(plain: dict[str, float], cp: dict[str, float], fixed: dict[str, int],
                n: int) -> dict[str, float]:  # fmt: skip
    """Activation bytes (everything but parameters, gradients and AdamW state) per method."""
    from sgs_tad.plan import predict

    block = plain["block_saved_bytes"]

    def act(per_chunk: dict[str, float], method: str, k: int | None = 1) -> float:
        p = predict(cost_of(per_chunk, fixed), n=n, k=k, ratio=RATIO if method == "sgs" else 1.0,
                    method=method)  # type: ignore[arg-type]  # fmt: skip
        return p.peak_bytes - p.fixed_bytes

    return {
        "naive": act(plain, "naive", None),
        "opentad": act(cp, "naive", None) + n * block,
        "ckpt": act(plain, "checkpoint"),
        "sgs": act(plain, "sgs"),
        "sgs+cp": act(cp, "sgs") + block,
    }


METHODS = {"naive": "naive", "opentad": "OpenTAD (per-block ckpt, all chunks)",
           "ckpt": "temporal ckpt K=1", "sgs": "SGS K=1 γ=0.3",
           "sgs+cp": "SGS K=1 γ=0.3 + in-snippet ckpt"}  # fmt: skip


def fits(total: float) -> str:
    return "24, 80" if total <= 24 * GB else "80" if total <= 80 * GB else "-"


def main_table(probes: dict[str, Any], models: list[str]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    lines = [
        "| model | frames, size | method | activations GB | params + grads + AdamW GB | "
        "total fp32 GB | fits fp32 (GB GPU) | total AMP est. GB | fits AMP est. | "
        "total bf16 est. GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        fixed = fixed_bytes(model)
        p_fixed = fixed["param_bytes"] + fixed["grad_bytes"] + fixed["optimizer_bytes"]
        for size in SIZES:
            if key(model, size, 2, True) not in probes or key(model, size, 2, False) not in probes:
                continue
            plain, cp = extended(probes, model, size, False), extended(probes, model, size, True)
            for n in CHUNKS:
                acts = activations(plain, cp, fixed, n)
                for method, a in acts.items():
                    total = p_fixed + a
                    amp = p_fixed + 0.5 * a  # bf16 activations, fp32 master weights and AdamW
                    bf16 = 0.5 * total
                    rows.append({"model": model, "size": size, "chunks": n, "method": method,
                                 "activation_bytes": a, "fixed_bytes": p_fixed,
                                 "total_bytes": total})  # fmt: skip
                    lines.append(
                        f"| {NAMES[model]} | {n * CHUNK_FRAMES}, {size}² | {METHODS[method]} | "
                        f"{a / GB:.2f} | {p_fixed / GB:.2f} | {total / GB:.2f} | {fits(total)} | "
                        f"{amp / GB:.2f} | {fits(amp)} | {bf16 / GB:.2f} |"
                    )
    return "\n".join(lines), rows


def check_table(probes: dict[str, Any], models: list[str]) -> str:
    """The depth extension against the full-depth probe (S and B)."""
    lines = [
        "| model, size | ckpt | saved/chunk MB: extended, full, ratio | no-grad peak/chunk MB: "
        "extended, full, ratio | activations at 48 chunks, naive / OpenTAD / "
        "SGS + in-snippet ckpt: ratio |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        fixed = fixed_bytes(model)
        for size in SIZES:
            full_keys = [key(model, size, "full", cp) for cp in (False, True)]
            if not all(k in probes for k in full_keys):
                continue
            full = {cp: {**probes[key(model, size, "full", cp)]} for cp in (False, True)}
            ext = {cp: extended(probes, model, size, cp) for cp in (False, True)}
            for cp in (False, True):
                full[cp]["block_saved_bytes"] = ext[False]["block_saved_bytes"]
            a_ext = activations(ext[False], ext[True], fixed, 48)
            a_full = activations(full[False], full[True], fixed, 48)
            ratios = " / ".join(f"{a_ext[m] / a_full[m]:.3f}"
                                for m in ("naive", "opentad", "sgs+cp"))  # fmt: skip
            for cp in (False, True):
                e, f = ext[cp], full[cp]
                lines.append(
                    f"| {NAMES[model]}, {size}² | {'in-snippet' if cp else 'none'} | "
                    f"{e['saved_bytes'] / MIB:.1f}, {f['saved_bytes'] / MIB:.1f}, "
                    f"{e['saved_bytes'] / f['saved_bytes']:.3f} | "
                    f"{e['nograd_peak_bytes'] / MIB:.1f}, {f['nograd_peak_bytes'] / MIB:.1f}, "
                    f"{e['nograd_peak_bytes'] / f['nograd_peak_bytes']:.3f} | "
                    + (ratios if not cp else "(with ckpt: in the row above)")
                    + " |"
                )
    return "\n".join(lines)


def lora_table(probes: dict[str, Any], lora: dict[str, Any]) -> str:
    from sgs_tad.plan import predict

    lines = [
        "| model | fine-tuning | trainable params | AdamW state after one step MB | "
        "gradients MB | saved/chunk MB (160²) | "
        "SGS K=1 γ=0.3 at 48 chunks: activations MB, total MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in ("s", "b"):
        for is_lora in (False, True):
            name = f"{model}-{'lora' if is_lora else 'full'}"
            if name not in lora or key(model, 160, "full", False, is_lora) not in probes:
                continue
            m, pr = lora[name], probes[key(model, 160, "full", False, is_lora)]
            cost = cost_of(pr, {"param_bytes": pr["param_bytes"], "grad_bytes": pr["grad_bytes"],
                                "optimizer_bytes": m["optimizer_state_bytes"]})  # fmt: skip
            p = predict(cost, n=48, k=1, ratio=RATIO, method="sgs")
            lines.append(
                f"| {NAMES[model]} | {'LoRA r=16' if is_lora else 'full'} | "
                f"{m['trainable'] / 1e6:.2f} M | {m['optimizer_state_bytes'] / MIB:.1f} | "
                f"{m['grad_bytes'] / MIB:.1f} | {pr['saved_bytes'] / MIB:.1f} | "
                f"{(p.peak_bytes - p.fixed_bytes) / MIB:.0f}, {p.peak_bytes / MIB:.0f} |"
            )
    return "\n".join(lines)


def environment() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return (f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs (shared), "
            f"{torch.get_num_threads()} thread(s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="s,b,l,h,g", help="presets to probe, e.g. l,h")
    parser.add_argument("--sizes", default="160,224", help="frame sizes to probe")
    parser.add_argument("--check", default="", help="models also probed at full depth, e.g. s,b")
    parser.add_argument("--check-sizes", default="160", help="frame sizes of --check")
    parser.add_argument("--lora", default="", help="models of the LoRA rows, e.g. s,b")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="probe cache (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = args.results
    data = json.loads(results.read_text()) if results.exists() else {"probes": {}, "lora": {}}
    probes, lora = data["probes"], data["lora"]

    def run(k: str, *a: Any, **kw: Any) -> None:
        if k in probes:
            return
        probes[k] = probe(*a, **kw)
        print(f"{k}: saved {probes[k]['saved_bytes'] / MIB:.1f} MB, no-grad peak "
              f"{probes[k]['nograd_peak_bytes'] / MIB:.1f} MB ({probes[k]['probe_s']:.0f} s)",
              flush=True)  # fmt: skip
        results.write_text(json.dumps(data, indent=1))

    for model in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            for depth in (1, 2):
                for cp in (False, True):
                    run(key(model, size, depth, cp), model, size, depth, cp)
        if model in args.check.split(","):
            for size in map(int, args.check_sizes.split(",")):
                for cp in (False, True):
                    run(key(model, size, "full", cp), model, size, depth_of(model), cp)
    for model in filter(None, args.lora.split(",")):
        for is_lora in (False, True):
            run(key(model, 160, "full", False, is_lora), model, 160, depth_of(model), False,
                lora=is_lora)  # fmt: skip
            name = f"{model}-{'lora' if is_lora else 'full'}"
            if name not in lora:
                lora[name] = optimizer_state_bytes(model, is_lora, 160)
                print(name, lora[name], flush=True)
                results.write_text(json.dumps(data, indent=1))
    data["environment"] = environment()
    results.write_text(json.dumps(data, indent=1))
    order = [m for m in "sbhlg" if any(k.startswith(f"{m}-") for k in probes)]
    order = [m for m in "sblhg" if m in order]
    main, _ = main_table(probes, order)
    command = "python benchmarks/vit_memory.py " + " ".join(sys.argv[1:])
    section = (
        f"{BEGIN}\n### Predicted per-model table (benchmarks/vit_memory.py)\n\n"
        f"Generated by `benchmarks/vit_memory.py` (last command: `{command.strip()}`); "
        f"environment: {data['environment']}. GB = 10⁹ bytes.\n\n"
        "**Depth extension against full-depth probes** (must be within 10 %):\n\n"
        f"{check_table(probes, order)}\n\n"
        f"**Peak memory of one training step, one video** (predicted):\n\n{main}\n\n"
        f"**LoRA against full fine-tuning** (measured: AdamW state after one step; the SGS "
        f"column is the planner's from the measured probe):\n\n{lora_table(probes, lora)}\n"
        f"{END}"
    )
    text = args.output.read_text()
    if BEGIN in text:
        text = text.split(BEGIN)[0] + section + text.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    args.output.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
