"""One interface over every pattern and executor: plan an index, run it.

``estimate_index(q, k, params)`` plans a :class:`SparseIndex` (once per batch, say);
``run_index(q, k, v, index, backend=...)`` executes it (per layer); ``sparse_attention``
does both, and runs dense SDPA for :class:`DenseParams`. Backends:

* ``"reference"``: exact masked softmax, O(N^2) memory (tests only);
* ``"gather"``: gather + batched matmul CPU path (no compiler needed);
* ``"flex"``: compiled FlexAttention with a ``BlockMask`` (CPU and CUDA);
* ``"triton"``: the Triton flash-style kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``);
* ``"auto"``: ``triton`` on CUDA. On CPU, measured at 32K on captured heads (README):
  ``gather`` was faster for column-free indices (A-shape, block-sparse: 7.5x vs 4.9x over
  dense at density 0.067), compiled ``flex`` for indices with key columns (FlexPrefill: 1.95x
  vs 1.6x); so ``gather`` without columns, ``flex`` with columns when a C compiler exists.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Literal

import torch

from .a_shape import estimate_a_shape
from .block_sparse import estimate_block_sparse
from .dense import dense_attention
from .executor_cpu import gather_attention
from .flexprefill import estimate_flexprefill
from .inputs import check_qkv
from .patterns import (
    AShapeParams,
    BlockSparseParams,
    DenseParams,
    FlexPrefillParams,
    PatternParams,
    SparseParams,
    VerticalSlashParams,
)
from .reference import masked_attention
from .sparse_index import SparseIndex
from .vertical_slash import estimate_vertical_slash

Backend = Literal["auto", "reference", "gather", "flex", "triton"]

_ESTIMATORS: dict[type, Callable[..., SparseIndex]] = {
    AShapeParams: estimate_a_shape,
    VerticalSlashParams: estimate_vertical_slash,
    BlockSparseParams: estimate_block_sparse,
    FlexPrefillParams: estimate_flexprefill,
}


def estimate_index(q: torch.Tensor, k: torch.Tensor, params: SparseParams, *, scale: float | None = None) -> SparseIndex:
    """Plan the sparse index of a pattern: ``q [Hq, N, D]``, ``k [Hkv, N, D]`` -> :class:`SparseIndex`."""
    estimator = _ESTIMATORS.get(type(params))
    if estimator is None:
        raise ValueError(f"no index estimator for {type(params).__name__} (dense attention needs no index)")
    return estimator(q, k, params, scale=scale)


def resolve_backend(backend: Backend, device: torch.device, index: SparseIndex | None = None) -> Backend:
    """The concrete backend ``"auto"`` stands for on ``device`` (for ``index``, when given)."""
    if backend != "auto":
        if backend not in ("reference", "gather", "flex", "triton"):
            raise ValueError(f"unknown backend {backend!r}")
        return backend
    if device.type == "cuda":
        return "triton"
    has_columns = index is None or bool((index.column_counts > 0).any())
    has_compiler = bool(shutil.which("cc") or shutil.which("gcc") or shutil.which("c++"))
    return "flex" if has_columns and has_compiler else "gather"


def run_index(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: SparseIndex,
    *,
    scale: float | None = None,
    backend: Backend = "auto",
    rows_from: int = 0,
) -> torch.Tensor:
    """Execute a planned index: ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` -> ``[Hq, N - rows_from, D]``.

    ``rows_from > 0`` asks only for the query rows ``[rows_from, N)`` (chunked prefill): the
    gather executor skips the earlier query blocks; the other executors compute every row and
    slice.
    """
    chosen = resolve_backend(backend, q.device, index)
    if chosen == "gather":
        return gather_attention(q, k, v, index, scale=scale, rows_from=rows_from)
    if chosen == "reference":
        out = masked_attention(q, k, v, index, scale=scale)
    elif chosen == "flex":
        from .executor_flex import flex_sparse_attention

        out = flex_sparse_attention(q, k, v, index, scale=scale)
    else:
        from .triton_kernels import triton_sparse_attention

        out = triton_sparse_attention(q, k, v, index, scale=scale)
    return out[:, rows_from:]


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: PatternParams,
    *,
    scale: float | None = None,
    causal: bool = True,
    backend: Backend = "auto",
    index: SparseIndex | None = None,
) -> torch.Tensor:
    """Causal sparse prefill attention with one pattern.

    ``q [Hq, N, D]``, ``k, v [Hkv, N, D]`` (bf16, fp16 or fp32; ``Hq`` a multiple of ``Hkv``)
    -> ``[Hq, N, D]``. ``index`` reuses a plan made earlier by :func:`estimate_index` with the
    same parameters. Only ``causal=True`` is supported.
    """
    check_qkv(q, k, v, scale=scale, causal=causal)
    if isinstance(params, DenseParams):
        return dense_attention(q, k, v, scale=scale)
    if index is None:
        index = estimate_index(q, k, params, scale=scale)
    return run_index(q, k, v, index, scale=scale, backend=backend)
