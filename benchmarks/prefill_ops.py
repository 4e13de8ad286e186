"""Op-level prefill benchmark: dense SDPA vs every sparse pattern on the same q/k/v.

Runs, in one process and on one device, dense causal SDPA and each sparse pattern (index
estimation included in ``sparse_ms``) over captured layers of the default model (or random
tensors with ``--random``), and reports per pattern: ``dense_ms``, ``sparse_ms``,
``speedup_vs_dense``, ``density`` and ``recall`` (mean over the captured heads). Speed is a
ratio within one run, never an absolute bar; each time is the best of ``--repeats`` runs, which
keeps the ratio meaningful on a shared machine. On CUDA it uses the Triton kernels and bf16;
on CPU the ``auto`` backend (gather for column-free indices, compiled FlexAttention for indices
with columns); ``--backend`` forces one, ``--compare-cpu-backends`` times flex and gather on
every pattern. ``--backend paged`` (CPU) runs column-free indices on vLLM's own paged CPU kernel,
as the engine does (``attention_backends.cpu_kernel``; the others on ``auto``), over a cache
written once per layer by vLLM's cache op (untimed: the engine writes it for dense too), and
also times that kernel dense (``dense_paged_ms``), so the ratio to SDPA separates the kernel's
own speed from the sparsity's.

    python benchmarks/prefill_ops.py --seq-len 32768 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention_backends import (  # noqa: E402
    AShapeParams,
    BlockSparseParams,
    FlexPrefillParams,
    SparseParams,
    VerticalSlashParams,
    attention_recall,
    dense_attention,
    estimate_index,
    parse_params,
    run_index,
    sample_rows,
)
from attention_backends.interface import resolve_backend  # noqa: E402

DEFAULT_LAYERS = (4, 12, 20)
MODEL_HEADS = (9, 3, 64)  # SmolLM2-135M: query heads, key/value heads, head_dim


def default_patterns() -> list[SparseParams]:
    """Budgets for 32K tokens: the smallest of a sweep whose recall on the structured layer is ~0.95."""
    return [
        AShapeParams(n_init=64, n_local=2048),
        VerticalSlashParams(n_vertical=2048, n_slash=256),
        BlockSparseParams(top_k=32),
        FlexPrefillParams(gamma=0.9, tau=0.1, min_budget=512),
    ]


class Row(BaseModel):
    """One pattern's result (per layer the best of ``--repeats`` runs, summed over layers)."""

    pattern: str
    seq_len: int
    dense_ms: float
    sparse_ms: float = Field(description="index estimation + sparse execution")
    estimate_ms: float
    execute_ms: float
    speedup_vs_dense: float
    density: float
    recall: float = Field(description="mean over heads and layers of the kept softmax mass")
    recall_min: float = Field(description="worst head")
    device: str
    backend: str
    params: dict[str, object]


class Report(BaseModel):
    """Everything the benchmark writes with ``--json``."""

    command: str
    source: str
    layers: list[int]
    dtype: str
    threads: int
    torch_version: str
    machine: str
    rows: list[Row]
    dense_paged_ms: float | None = Field(None, description="vLLM's paged CPU kernel, dense (--backend paged)")
    repeats: int
    warmup_s: dict[str, float] = Field(description="first-call (compile) seconds per backend/pattern, untimed")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, (time.perf_counter() - start) * 1000.0


def load_inputs(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``[(layer, q, k, v)]`` from captures of the default model, or random tensors."""
    if args.random:
        gen = torch.Generator().manual_seed(args.seed)
        hq, hkv, d = MODEL_HEADS
        out = []
        for layer in args.layers:
            q, k, v = (torch.randn(h, args.seq_len, d, generator=gen) for h in (hq, hkv, hkv))
            out.append((layer, q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)))
        return out
    from attention_backends.capture import CaptureConfig, capture_qkv

    model_dir = args.model_dir
    if model_dir is None:
        from server.model_prep import default_model_dir

        model_dir = default_model_dir()
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"error: no model at {model_dir}; run `sparse-serve prepare-model` or pass --random")
    config = CaptureConfig(model_dir=Path(model_dir), seq_len=args.seq_len, layers=tuple(args.layers), seed=args.seed)
    captures = capture_qkv(config)
    return [(c.layer, c.q.to(device, dtype), c.k.to(device, dtype), c.v.to(device, dtype)) for c in captures]


def _executor(index, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str,
              paged: list | None) -> tuple[Callable[[], object], str]:
    """How layer ``i`` runs ``index``: vLLM's kernel for a column-free index under ``--backend paged``
    (``auto`` for the others), else ``backend``. Returns the call and the backend's name."""
    if paged is not None and not index.has_columns:
        return (lambda: paged[i].sparse(index)), "paged"
    chosen = resolve_backend("auto" if paged is not None else backend, q.device, index)
    return (lambda: run_index(q, k, v, index, backend=chosen)), chosen


def bench_pattern(
    params: SparseParams,
    inputs: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]],
    backend: str,
    device: torch.device,
    args: argparse.Namespace,
    progress: tqdm,
    paged: list | None = None,
) -> dict[str, object]:
    """Estimate + execute one pattern on every layer (best of ``--repeats``); summed times, density, recall."""
    est_ms = exe_ms = 0.0
    densities, recalls = [], []
    for i, (_, q, k, v) in enumerate(inputs):
        best_est = best_exe = float("inf")
        for _ in range(args.repeats):
            index, t_est = _timed(lambda: estimate_index(q, k, params), device)
            run, used = _executor(index, i, q, k, v, backend, paged)
            _, t_exe = _timed(run, device)
            if t_est + t_exe < best_est + best_exe:
                best_est, best_exe = t_est, t_exe
        est_ms += best_est
        exe_ms += best_exe
        densities.append(index.density())
        rows = sample_rows(q.shape[1], args.recall_rows, q.device)
        recalls.append(attention_recall(q, k, index, rows=rows))
        progress.update(1)
    per_head = torch.cat(recalls)
    return {
        "backend": used,
        "estimate_ms": est_ms,
        "execute_ms": exe_ms,
        "density": sum(densities) / len(densities),
        "recall": float(per_head.mean()),
        "recall_min": float(per_head.min()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--random", action="store_true", help="random tensors instead of model captures")
    parser.add_argument("--layers", type=int, nargs="+", default=list(DEFAULT_LAYERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--backend", default="auto", choices=["auto", "gather", "flex", "triton", "paged"],
                        help="paged: vLLM's CPU kernel for column-free indices (CPU only)")
    parser.add_argument("--compare-cpu-backends", action="store_true", help="also time the gather and flex CPU paths")
    parser.add_argument("--patterns", type=Path, default=None, help="JSON list of pattern parameter objects")
    parser.add_argument("--recall-rows", type=int, default=1024, help="query rows sampled for recall")
    parser.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.seq_len < 1:
        parser.error("--seq-len must be positive")
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    if args.recall_rows < 1:
        parser.error("--recall-rows must be positive")
    return args


def main(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    patterns = (
        [parse_params(p) for p in json.loads(args.patterns.read_text())] if args.patterns else default_patterns()
    )
    backends = [args.backend]
    if args.compare_cpu_backends and device.type == "cpu":
        backends = ["flex", "gather"]
    if args.backend == "paged" and (device.type != "cpu" or args.compare_cpu_backends):
        raise SystemExit("error: --backend paged runs vLLM's CPU kernel: CPU only, without --compare-cpu-backends")
    inputs = load_inputs(args, device, dtype)
    paged = None
    if args.backend == "paged":
        from attention_backends.cpu_kernel import PagedSequence

        paged = [PagedSequence.of(q, k, v, block_size=64) for _, q, k, v in inputs]  # 64: exactly the index's pairs

    # warm-up (compiles flex/Triton once per shape); untimed but reported
    warmup: dict[str, float] = {}
    _, q0, k0, v0 = inputs[0]
    dense_attention(q0, k0, v0)
    for b in backends:
        for params in patterns:
            index = estimate_index(q0, k0, params)
            _, ms = _timed(_executor(index, 0, q0, k0, v0, b, paged)[0], device)
            warmup[f"{b}/{params.pattern.value}"] = round(ms / 1000.0, 2)

    dense_ms = sum(
        min(_timed(lambda: dense_attention(q, k, v), device)[1] for _ in range(args.repeats)) for _, q, k, v in inputs
    )
    dense_paged_ms = None
    if paged:
        paged[0].dense()
        dense_paged_ms = sum(min(_timed(layer.dense, device)[1] for _ in range(args.repeats)) for layer in paged)
    rows: list[Row] = []
    with tqdm(total=len(backends) * len(patterns) * len(inputs), desc="patterns x layers") as progress:
        for b in backends:
            for params in patterns:
                res = bench_pattern(params, inputs, b, device, args, progress, paged)
                sparse_ms = res["estimate_ms"] + res["execute_ms"]
                rows.append(
                    Row(
                        pattern=params.pattern.value,
                        seq_len=args.seq_len,
                        dense_ms=round(dense_ms, 1),
                        sparse_ms=round(sparse_ms, 1),
                        estimate_ms=round(res["estimate_ms"], 1),
                        execute_ms=round(res["execute_ms"], 1),
                        speedup_vs_dense=round(dense_ms / sparse_ms, 2),
                        density=round(res["density"], 4),
                        recall=round(res["recall"], 4),
                        recall_min=round(res["recall_min"], 4),
                        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                        backend=str(res["backend"]),
                        params=params.model_dump(mode="json", exclude={"pattern"}),
                    )
                )
    report = Report(
        command=" ".join(["python", "benchmarks/prefill_ops.py", *(argv if argv is not None else sys.argv[1:])]),
        source="random" if args.random else "captured",
        layers=list(args.layers),
        dtype=dtype_name,
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        machine=platform.processor() or platform.machine(),
        rows=rows,
        dense_paged_ms=None if dense_paged_ms is None else round(dense_paged_ms, 1),
        repeats=args.repeats,
        warmup_s=warmup,
    )
    print_table(report)
    if args.json:
        args.json.write_text(report.model_dump_json(indent=2))
    return report


def print_table(report: Report) -> None:
    cols = ["pattern", "backend", "seq_len", "dense_ms", "sparse_ms", "speedup_vs_dense", "density", "recall", "recall_min", "device"]
    print(f"# {report.source} q/k/v, layers {report.layers}, {report.dtype}, torch {report.torch_version}")
    if report.dense_paged_ms is not None:
        print(f"# dense on vLLM's paged CPU kernel: {report.dense_paged_ms} ms (SDPA: dense_ms)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in report.rows:
        values = row.model_dump()
        print("| " + " | ".join(str(values[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
