"""``python -m sgs_tad.plan``: the planner from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from sgs_tad.encoders import ENCODERS, build_encoder, freeze_encoder
from sgs_tad.engine.memory import format_bytes, measure_snippet_cost, parse_bytes
from sgs_tad.engine.prefix import measure_prefix_cost
from sgs_tad.plan.model import Method, predict, recommend
from sgs_tad.plan.verify import measure_run

__all__ = ["main"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints such as 16,32,64, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive ints such as 16,32,64, got {text!r}")
    return values


def _ratios(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ratios in [0, 1] such as 0.3,1.0, got {text!r}"
        ) from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected ratios in [0, 1] such as 0.3,1.0, got {text!r}"
        )
    return values


def _budget(text: str) -> int:
    try:
        return parse_bytes(text)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _mib(num: float) -> str:
    return f"{num / 2**20:.2f}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sgs_tad.plan",
        description="Predict peak memory and time of naive, checkpointed and SGS training from "
        "one measured micro-batch, and recommend K and γ for a budget.",
    )
    parser.add_argument("--encoder", required=True, choices=sorted(ENCODERS))
    parser.add_argument(
        "--snippet-shape",
        required=True,
        type=_ints,
        help="one snippet, C,L,H,W (channels before frames), e.g. 3,8,112,112",
    )
    parser.add_argument("--n", required=True, type=_ints, help="snippets per video, e.g. 16,32")
    parser.add_argument("--k", type=_ints, default=[1, 2, 4, 8], help="micro-batch sizes K")
    parser.add_argument("--ratio", type=_ratios, default=[0.3, 1.0], help="SGS ratios γ")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=_budget, help="memory budget, e.g. 16GB, 512MiB, 1.5G")
    parser.add_argument("--time-budget", type=float, help="encoder seconds per video")
    parser.add_argument(
        "--micro-batch-size", type=int, default=2, help="snippets in the measured micro-batch"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed measurement rounds")
    parser.add_argument(
        "--frozen-stages",
        type=int,
        help="apply sgs_tad.encoders.freeze_encoder (frozen BatchNorm, stages fixed) first",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also run every configuration for real and print measured saved bytes and time",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m sgs_tad.plan --encoder ... --snippet-shape ... --n ...``.

    Prints a markdown table of predictions (and, with ``--verify``, measurements) per method,
    N, K and γ, then the recommendation for each N when ``--budget`` is given.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    encoder = build_encoder(args.encoder)
    if args.frozen_stages is not None:
        encoder = freeze_encoder(encoder, frozen_stages=args.frozen_stages)
    encoder = encoder.to(args.device)
    cost = measure_snippet_cost(
        encoder,
        args.snippet_shape,
        micro_batch_size=args.micro_batch_size,
        device=args.device,
        repeats=args.repeats,
    )
    shape = ",".join(map(str, cost.snippet_shape))
    print(
        f"{args.encoder}, snippet {shape} on {cost.device}, measured on {cost.micro_batch_size} "
        f"snippets: saved {format_bytes(cost.saved_bytes)}/snippet, workspace "
        f"{format_bytes(cost.workspace_bytes)}/snippet, input {format_bytes(cost.input_bytes)}"
        f"/snippet, fixed {format_bytes(cost.fixed_bytes)} (parameters "
        f"{format_bytes(cost.param_bytes)}, gradients {format_bytes(cost.grad_bytes)}, AdamW "
        f"{format_bytes(cost.optimizer_bytes)}); per snippet: forward no-grad "
        f"{cost.fwd_nograd_s * 1e3:.1f} ms, forward {cost.fwd_grad_s * 1e3:.1f} ms, backward "
        f"{cost.bwd_s * 1e3:.1f} ms"
    )
    prefix = measure_prefix_cost(
        encoder,
        args.snippet_shape,
        micro_batch_size=args.micro_batch_size,
        device=args.device,
        repeats=args.repeats,
    )
    if prefix is not None:
        print(
            f"frozen prefix ({prefix.stages} stage(s) without a trainable parameter): SGS keeps "
            f"its output for the sampled snippets, {format_bytes(prefix.bytes_per_snippet)}"
            f"/snippet, and phase 3 skips its {prefix.seconds_per_snippet * 1e3:.1f} ms/snippet "
            "(reuse_frozen_prefix, 256 MB by default)"
        )
    print()
    header = "| N | method | K | γ | saved MiB | peak MiB | time s |"
    rule = "|---|---|---|---|---|---|---|"
    if args.verify:
        header += " measured saved MiB | measured time s |"
        rule += "---|---|"
    if args.budget is not None:
        header += " fits |"
        rule += "---|"
    print(header)
    print(rule)
    for n in args.n:
        configs: list[tuple[Method, int | None, float]] = [("naive", None, 1.0)]
        configs += [("checkpoint", k, 1.0) for k in args.k if k <= n]
        configs += [("sgs", k, r) for k in args.k if k <= n for r in args.ratio]
        for method, k, ratio in configs:
            p = predict(cost, n=n, k=k, ratio=ratio, method=method, prefix=prefix)
            row = (
                f"| {n} | {method} | {p.k if p.k is not None else '-'} | "
                f"{f'{p.ratio:g}' if method == 'sgs' else '-'} | {_mib(p.saved_bytes)} | "
                f"{_mib(p.peak_bytes)} | {p.time_s:.3f} |"
            )
            if args.verify:
                try:
                    run = measure_run(
                        encoder,
                        args.snippet_shape,
                        n=n,
                        method=method,
                        k=k,
                        ratio=ratio,
                        repeats=args.repeats,
                    )
                    row += f" {_mib(run.saved_bytes)} | {run.time_s:.3f} |"
                except torch.OutOfMemoryError:
                    # The configuration does not fit the device: that is a result of the
                    # verification, not a reason to lose the rows measured so far. Leaving
                    # this block drops the failed step's tensors (the traceback held them).
                    row += " OOM | OOM |"
            if args.budget is not None:
                fits = p.peak_bytes <= args.budget and (
                    args.time_budget is None or p.time_s <= args.time_budget
                )
                row += f" {'yes' if fits else 'no'} |"
            print(row, flush=True)
    if args.budget is not None:
        print(
            f"\nRecommendation for a budget of {format_bytes(args.budget)}"
            + (f" and {args.time_budget:g} s per video" if args.time_budget is not None else "")
            + ":\n"
        )
        for n in args.n:
            try:
                rec = recommend(
                    cost,
                    n=n,
                    budget_bytes=args.budget,
                    time_budget_s=args.time_budget,
                    prefix=prefix,
                )
            except ValueError as err:
                print(f"- N={n}: {err}")
                continue
            p = rec.prediction
            print(
                f"- N={n}: SGS with K={rec.k}, γ={rec.ratio:.3g} ({p.sampled} of {n} snippets): "
                f"peak {format_bytes(p.peak_bytes)}, {p.time_s:.3f} s per video"
                + ("; naive end to end fits too" if rec.naive_fits else "")
            )
    return 0
