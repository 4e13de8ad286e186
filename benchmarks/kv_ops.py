"""Op-level decode benchmark: one decode step of dense attention vs the ShadowKV store, per layer.

For each context length, builds one layer's KV with the default model's shapes (9 query heads,
3 KV heads, head_dim 64; random low-rank-plus-noise pre-RoPE keys, RoPE theta 1e5) and times,
in one process on one device:

* ``dense_ms``: exact decode attention of one query over the whole cache;
* ``shadowkv_ms``: :meth:`kvcache.store.SequenceKvStore.attend` (landmark scoring, top chunks within
  the budget, low-rank key rebuild + RoPE, value fetch from the offload tier, exact attention);

and reports the bytes each holds per token on both tiers. Times are the median of ``--repeats``
steps after a warm-up; on a shared CPU read them as ratios within one run.

    OMP_NUM_THREADS=1 python benchmarks/kv_ops.py --contexts 8192,32768 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvcache.decode_attention import dense_decode_attention  # noqa: E402
from kvcache.params import FullKvParams, ShadowKvParams  # noqa: E402
from kvcache.rope import apply_rope, rope_inv_freq  # noqa: E402
from kvcache.store import SequenceKvStore  # noqa: E402

MODEL_HEADS = (9, 3, 64)  # SmolLM2-135M: query heads, key/value heads, head_dim
ROPE_THETA = 100000.0


def _layer(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    hq, hkv, d = MODEL_HEADS
    g = torch.Generator().manual_seed(seed)
    k_pre = (torch.randn(n, 24, generator=g) @ torch.randn(24, hkv * d, generator=g)).reshape(n, hkv, d).permute(1, 0, 2)
    k_pre = (k_pre + 0.1 * torch.randn(hkv, n, d, generator=g)).contiguous().to(device)
    inv_freq = rope_inv_freq(d, ROPE_THETA, device=device)
    k_post = apply_rope(k_pre, torch.arange(n, device=device), inv_freq=inv_freq)
    v = torch.randn(hkv, n, d, generator=g).to(device)
    q = apply_rope(torch.randn(hq, 1, d, generator=g).to(device), torch.tensor([n], device=device), inv_freq=inv_freq)[:, 0]
    return q, k_pre, k_post, v, inv_freq


def _time_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run(contexts: list[int], params: ShadowKvParams, repeats: int, device: torch.device) -> list[dict]:
    rows = []
    hq, hkv, d = MODEL_HEADS
    for n in contexts:
        q, k_pre, k_post, v, inv_freq = _layer(n, device)
        store = SequenceKvStore(params, hkv, d, inv_freq=inv_freq, device=device)
        store.prefill(k_pre, k_post, v)
        dense = SequenceKvStore(FullKvParams(), hkv, d, device=device)
        dense.prefill(k_pre, k_post, v)
        dense_ms = _time_ms(lambda: dense_decode_attention(q, k_post, v), repeats, device)
        ours_ms = _time_ms(lambda: store.attend(q), repeats, device)
        out, stats = store.attend(q)
        rows.append({
            "context": n,
            "dense_ms": round(dense_ms, 3),
            "shadowkv_ms": round(ours_ms, 3),
            "speedup": round(dense_ms / ours_ms, 3),
            "positions_read": max(stats.positions),
            "pool_bytes_per_token_dense": round(dense.pool_bytes() / n, 1),
            "pool_bytes_per_token_ours": round(store.pool_bytes() / n, 1),
            "offload_bytes_per_token": round(store.offload_bytes() / n, 1),
            "offload_bytes_read_per_step": stats.offload_bytes_read,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="8192,32768", help="comma-separated context lengths")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    params = ShadowKvParams(rank=args.rank, budget=args.budget)
    rows = run([int(c) for c in args.contexts.split(",")], params, args.repeats, device)
    cols = list(rows[0])
    print(f"device={device} threads={torch.get_num_threads()} rank={args.rank} budget={args.budget} shapes(Hq,Hkv,D)={MODEL_HEADS}")
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "params": params.model_dump(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
