"""Sparse prefill attention: MInference patterns, FlexPrefill, exact references and fast executors.

Plan once, run per layer::

    index = estimate_index(q, k, VerticalSlashParams(n_vertical=500, n_slash=500))
    out = run_index(q, k, v, index)            # or sparse_attention(q, k, v, params)
    density(index), attention_recall(q, k, index)

Shapes everywhere: ``q [Hq, N, D]``, ``k, v [Hkv, N, D]``, causal.
"""

from .a_shape import estimate_a_shape
from .block_sparse import estimate_block_sparse
from .dense import dense_attention
from .flexprefill import FlexPrefillPlan, estimate_flexprefill, plan_flexprefill
from .interface import Backend, estimate_index, run_index, sparse_attention
from .metrics import attention_recall, density, sample_rows
from .patterns import (
    AShapeParams,
    BlockSparseParams,
    DenseParams,
    FlexPrefillParams,
    Pattern,
    PatternParams,
    SparseParams,
    VerticalSlashParams,
    default_params,
    parse_params,
)
from .reference import masked_attention
from .sparse_index import SparseIndex
from .vertical_slash import estimate_vertical_slash

__all__ = [
    "AShapeParams",
    "Backend",
    "BlockSparseParams",
    "DenseParams",
    "FlexPrefillParams",
    "FlexPrefillPlan",
    "Pattern",
    "PatternParams",
    "SparseIndex",
    "SparseParams",
    "VerticalSlashParams",
    "attention_recall",
    "default_params",
    "dense_attention",
    "density",
    "estimate_a_shape",
    "estimate_block_sparse",
    "estimate_flexprefill",
    "estimate_index",
    "estimate_vertical_slash",
    "masked_attention",
    "parse_params",
    "plan_flexprefill",
    "run_index",
    "sample_rows",
    "sparse_attention",
]
