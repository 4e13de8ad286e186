"""Sparse prefill attention patterns and their parameters (pydantic models).

The patterns are the ones of MInference (Jiang et al., 2024: A-shape, vertical-slash,
block-sparse) and FlexPrefill (Lai et al., 2025: per-head choice between query-aware
block selection and vertical-slash, driven by a Jensen-Shannon divergence test).
Every parameter model carries a ``pattern`` discriminator, so a JSON/YAML config can
name a pattern and its budgets in one object (see :data:`PatternParams`).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Pattern(str, Enum):
    """Names of the supported attention patterns."""

    DENSE = "dense"
    A_SHAPE = "a_shape"
    VERTICAL_SLASH = "vertical_slash"
    BLOCK_SPARSE = "block_sparse"
    FLEXPREFILL = "flexprefill"


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    block_size: int = Field(64, gt=0, description="Query/key block size in tokens.")


class DenseParams(_Params):
    """Full causal attention (the reference every pattern is compared with)."""

    pattern: Literal[Pattern.DENSE] = Pattern.DENSE


class AShapeParams(_Params):
    """Streaming attention: attention sinks plus a local window (StreamingLLM / MInference A-shape).

    Keys are kept at block granularity: each query block sees the key blocks that cover the
    first ``n_init`` tokens and the last ``n_local`` tokens before each of its rows.
    """

    pattern: Literal[Pattern.A_SHAPE] = Pattern.A_SHAPE
    n_init: int = Field(128, ge=0, description="Sink tokens kept at the start of the sequence.")
    n_local: int = Field(1024, gt=0, description="Local window length in tokens.")


class VerticalSlashParams(_Params):
    """MInference vertical-slash: top key columns plus top diagonals, estimated from the last queries."""

    pattern: Literal[Pattern.VERTICAL_SLASH] = Pattern.VERTICAL_SLASH
    last_q: int = Field(64, gt=0, description="Number of trailing queries used to estimate the pattern.")
    n_vertical: int = Field(1000, gt=0, description="Budget of vertical lines (key columns).")
    n_slash: int = Field(6096, gt=0, description="Budget of slash lines (diagonals).")
    n_sink: int = Field(30, ge=0, description="First key columns always kept (within the vertical budget).")
    n_recent: int = Field(64, ge=1, description="Most recent diagonals always kept (within the slash budget).")


class BlockSparseParams(_Params):
    """MInference block-sparse: top-k key blocks per query block from mean-pooled q/k scores."""

    pattern: Literal[Pattern.BLOCK_SPARSE] = Pattern.BLOCK_SPARSE
    top_k: int = Field(16, gt=0, description="Key blocks kept per query block (sink and diagonal included).")


class FlexPrefillParams(_Params):
    """FlexPrefill: per head, query-aware block selection or vertical-slash, chosen by a JSD test."""

    pattern: Literal[Pattern.FLEXPREFILL] = Pattern.FLEXPREFILL
    gamma: float = Field(0.9, gt=0.0, le=1.0, description="Cumulative attention mass to cover.")
    tau: float = Field(0.1, ge=0.0, le=1.0, description="sqrt-JSD threshold below which a head is query-aware.")
    min_budget: int = Field(
        512,
        gt=0,
        description="Minimum keys: at least this many columns and diagonals (vertical-slash heads), "
        "or ceil(min_budget / block_size) key blocks per query block (query-aware heads).",
    )
    n_sink: int = Field(30, ge=0, description="First key columns always kept on vertical-slash heads.")
    n_recent: int = Field(64, ge=1, description="Most recent diagonals always kept on vertical-slash heads.")


PatternParams = Annotated[
    Union[DenseParams, AShapeParams, VerticalSlashParams, BlockSparseParams, FlexPrefillParams],
    Field(discriminator="pattern"),
]
"""Any pattern's parameters; ``parse_params({"pattern": "a_shape", "n_local": 512})`` builds one."""

_PARAMS_ADAPTER: TypeAdapter[PatternParams] = TypeAdapter(PatternParams)

SparseParams = Union[AShapeParams, VerticalSlashParams, BlockSparseParams, FlexPrefillParams]
"""Parameters of the patterns that produce a :class:`~attention_backends.sparse_index.SparseIndex`."""


def parse_params(data: dict[str, object]) -> PatternParams:
    """Validate a plain mapping (e.g. from JSON) into the matching parameter model."""
    return _PARAMS_ADAPTER.validate_python(data)


def default_params(pattern: Pattern | str) -> PatternParams:
    """Default parameters of a pattern given by name."""
    return parse_params({"pattern": Pattern(pattern).value})
