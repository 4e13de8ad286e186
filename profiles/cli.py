"""`sparse-serve profile`: build a per-head profile (default), `show FILE`, `check FILE --model DIR`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .profiler import ProfileRequest, timed_build
from .schema import ProfileError, check_fingerprint, fingerprint_from_dir, load_profile, save_profile
from .summary import format_summary

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "sparse-serve" / "models" / "smollm2-135m-instruct"


def _lengths(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths must be comma-separated integers; got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--lengths must list positive integers; got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `sparse-serve profile [build|show|check]`."""
    parser.add_argument("action", nargs="?", default="build", choices=("build", "show", "check"), help="default: build")
    parser.add_argument("file", nargs="?", type=Path, help="profile file for show / check")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="HF model folder (Llama/Qwen/Mistral family)")
    parser.add_argument("--out", type=Path, help="where build writes the profile JSON")
    parser.add_argument("--lengths", type=_lengths, default=[8192], help="calibration lengths, e.g. 8192,16384")
    parser.add_argument("--target-recall", type=float, default=0.95, help="attention recall each sparse head must keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--query-rows", type=int, default=256, help="query rows (later half) scored per length")
    parser.add_argument(
        "--dense-layers", type=int, default=3, metavar="N",
        help="keep every head of the first N layers dense: an error there reaches every later layer (default 3)",
    )
    parser.add_argument(
        "--costs-from", type=Path, metavar="PROFILE",
        help="reuse the per-pattern costs measured in an earlier profile instead of timing them (reproducible reruns)",
    )
    parser.add_argument(
        "--retrieval-heads", type=float, metavar="F",
        help="DuoAttention-style: keep the fraction F of the model's heads with the lowest streaming recall dense and "
             "run every other head A-shape (much sparser than --target-recall, which then picks only KV policies)",
    )
    parser.add_argument("--streaming-window", type=int, default=512, metavar="N",
                        help="local window of the A-shape heads with --retrieval-heads (default 512)")
    parser.add_argument("--retrieval-top-k", type=int, metavar="K",
                        help="with --retrieval-heads: run the retrieval heads block-sparse with K key blocks per query "
                             "block (a scored candidate: 64-token blocks, budgets 1/32 to 1/4 of the shortest length) "
                             "instead of dense")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; returns the exit status (errors print one clear message and return 2)."""
    try:
        if args.action == "build":
            return _build(args)
        if args.file is None:
            raise ValueError(f"`profile {args.action}` needs a FILE")
        profile = load_profile(args.file)
        if args.action == "show":
            print(format_summary(profile))
            return 0
        check_fingerprint(profile, fingerprint_from_dir(args.model), source=str(args.file))
        print(f"{args.file}: valid for {args.model} ({profile.model.num_layers} layers x {profile.model.num_q_heads} heads)")
        return 0
    except (ProfileError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ValueError("`profile build` needs --out FILE")
    if not 0.0 < args.target_recall <= 1.0:
        raise ValueError(f"--target-recall must be in (0, 1]; got {args.target_recall}")
    if args.dense_layers < 0:
        raise ValueError(f"--dense-layers must be >= 0; got {args.dense_layers}")
    if args.retrieval_heads is not None and not 0.0 <= args.retrieval_heads < 1.0:
        raise ValueError(f"--retrieval-heads must be in [0, 1); got {args.retrieval_heads}")
    if args.retrieval_top_k is not None and (args.retrieval_heads is None or args.retrieval_top_k <= 0):
        raise ValueError(f"--retrieval-top-k must be a positive block count and needs --retrieval-heads; "
                         f"got {args.retrieval_top_k}")
    costs = None
    if args.costs_from is not None:
        costs = load_profile(args.costs_from).calibration.pattern_cost
        if not costs:
            raise ValueError(f"{args.costs_from}: calibration.pattern_cost is empty (profile made before costs were measured)")
    words = ["--model", str(args.model), "--out", str(args.out), "--lengths", ",".join(map(str, args.lengths)),
             "--target-recall", str(args.target_recall), "--seed", str(args.seed), "--dense-layers", str(args.dense_layers)]
    if args.costs_from is not None:
        words += ["--costs-from", str(args.costs_from)]
    if args.retrieval_heads is not None:
        words += ["--retrieval-heads", str(args.retrieval_heads), "--streaming-window", str(args.streaming_window)]
    if args.retrieval_top_k is not None:
        words += ["--retrieval-top-k", str(args.retrieval_top_k)]
    command = "sparse-serve profile " + " ".join(shlex.quote(a) for a in words)
    request = ProfileRequest(
        model_dir=args.model,
        lengths=tuple(args.lengths),
        target_recall=args.target_recall,
        seed=args.seed,
        query_rows=args.query_rows,
        dense_layers=args.dense_layers,
        command=command,
        pattern_cost=costs,
        retrieval_heads=args.retrieval_heads,
        streaming_window=args.streaming_window,
        retrieval_top_k=args.retrieval_top_k,
    )
    profile, seconds = timed_build(request, progress=not args.quiet)
    save_profile(profile, args.out)
    print(format_summary(profile))
    print(f"wrote {args.out} in {seconds:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m profiles``."""
    parser = argparse.ArgumentParser(prog="sparse-serve profile", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
