"""How sparse can prefill attention be on these heads? The oracle density at a recall target.

For the same captured layers as ``prefill_ops.py``, computes the exact causal softmax over a
sample of query tiles and reports the fewest pairs any pattern of a given granularity can keep
to reach each recall target (``attention_backends.oracle``): tiles of 64 x 64 bound block-sparse
(and FlexPrefill's query-aware blocks), single pairs (granularity 1) bound vertical-slash and
every other pattern. ``per_head`` makes each head reach the target alone; ``pooled`` only the
mean over heads (what ``prefill_ops.py``'s recall column measures). ``ceiling`` = 1 / density,
the speed-up an estimator-free executor as fast per pair as dense SDPA would get. With
``--compare report.json`` (a ``prefill_ops.py --json`` report of the same layers and length) it
also prints, per pattern, the oracle's density at the recall that pattern reached.

    python benchmarks/prefill_ceiling.py --seq-len 32768 --json ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention_backends.oracle import MassHistogram, tile_mass_histogram  # noqa: E402
from benchmarks.prefill_ops import DEFAULT_LAYERS, load_inputs  # noqa: E402


class CeilingRow(BaseModel):
    """The oracle density for one layer (or ``all``) at one granularity and recall target."""

    layer: str
    granularity: int
    target: float
    density_per_head: float
    density_pooled: float
    ceiling_pooled: float
    rows: int


class PatternGap(BaseModel):
    """A measured pattern next to the oracle at the recall it reached (pooled, all layers)."""

    pattern: str
    recall: float
    density: float
    oracle_density_tiles: float = Field(description="at the coarsest --granularities entry (64 by default)")
    oracle_density_pairs: float = Field(description="at the finest --granularities entry (1 by default)")


class CeilingReport(BaseModel):
    command: str
    seq_len: int
    layers: list[int]
    rows: list[CeilingRow]
    compared: list[PatternGap]


def ceiling_rows(layer: str, hist: MassHistogram, targets: list[float]) -> list[CeilingRow]:
    rows = []
    for target in targets:
        pooled = hist.density_pooled(target)
        rows.append(
            CeilingRow(
                layer=layer,
                granularity=hist.granularity,
                target=target,
                density_per_head=round(float(hist.density_per_head(target).mean()), 4),
                density_pooled=round(pooled, 4),
                ceiling_pooled=round(1.0 / pooled, 2),
                rows=hist.rows,
            )
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--layers", type=int, nargs="+", default=list(DEFAULT_LAYERS))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--granularities", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--rows", type=int, default=4096, help="query rows sampled (as whole tiles) per layer")
    parser.add_argument("--compare", type=Path, default=None, help="a prefill_ops.py --json report to set beside the oracle")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--random", action="store_true", help="random tensors instead of model captures")
    args = parser.parse_args(argv)
    if any(not 0.0 < t <= 1.0 for t in args.targets):
        parser.error("--targets must be in (0, 1]")
    if any(g < 1 for g in args.granularities) or args.rows < 1:
        parser.error("--granularities and --rows must be positive")
    return args


def main(argv: list[str] | None = None) -> CeilingReport:
    args = parse_args(argv)
    inputs = load_inputs(args, torch.device("cpu"), torch.float32)
    merged: dict[int, MassHistogram] = {}
    rows: list[CeilingRow] = []
    for layer, q, k, _ in tqdm(inputs, desc="layers"):
        for g in args.granularities:
            hist = tile_mass_histogram(q, k, granularity=g, query_tiles=max(args.rows // g, 1))
            rows += ceiling_rows(str(layer), hist, args.targets)
            merged[g] = hist if g not in merged else merged[g].concat(hist)
    for g, hist in merged.items():
        rows += ceiling_rows("all", hist, args.targets)
    compared = []
    if args.compare:
        report = json.loads(args.compare.read_text())
        for r in report["rows"]:
            compared.append(
                PatternGap(
                    pattern=r["pattern"],
                    recall=r["recall"],
                    density=r["density"],
                    oracle_density_tiles=round(merged[max(merged)].density_pooled(r["recall"]), 4),
                    oracle_density_pairs=round(merged[min(merged)].density_pooled(r["recall"]), 4),
                )
            )
    out = CeilingReport(
        command=" ".join(["python", "benchmarks/prefill_ceiling.py", *(argv if argv is not None else sys.argv[1:])]),
        seq_len=args.seq_len,
        layers=list(args.layers),
        rows=rows,
        compared=compared,
    )
    print(f"# oracle density at a recall target, layers {out.layers}, seq_len {out.seq_len}")
    print("| layer | granularity | target | density_per_head | density_pooled | ceiling_pooled |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.layer} | {r.granularity} | {r.target} | {r.density_per_head} | {r.density_pooled} | {r.ceiling_pooled} |")
    if compared:
        print(f"\n| pattern | recall | density | oracle density ({max(merged)}-tiles) | oracle density (pairs) |")
        print("|---|---|---|---|---|")
        for c in compared:
            print(f"| {c.pattern} | {c.recall} | {c.density} | {c.oracle_density_tiles} | {c.oracle_density_pairs} |")
    if args.json:
        args.json.write_text(out.model_dump_json(indent=2))
    return out


if __name__ == "__main__":
    main()
