"""Compressed and offloaded KV cache for long-context decode: ShadowKV, NOSA-style and streaming policies.

Per sequence, layer and policy group, one store holds the decode-time KV on two tiers::

    store = SequenceKvStore(ShadowKvParams(rank=32, budget=2048), num_kv_heads=3, head_dim=64, inv_freq=inv_freq)
    store.prefill(k_pre_rope, k_post_rope, v)      # [Hkv, N, D]: low-rank fit, landmarks, outliers, offload
    store.append(k_pre_new, k_post_new, v_new)     # each decode step: [Hkv, T, D]
    out, stats = store.attend(q)                   # q [Hq, D] -> [Hq, D]; exact attention over the selection
    store.pool_bytes(), store.offload_bytes()

The pure math lives in one module per idea: :mod:`.rope`, :mod:`.lowrank`, :mod:`.landmarks`,
:mod:`.selection`, :mod:`.decode_attention`, :mod:`.nosa`, :mod:`.resident`, :mod:`.streaming`. Shapes are heads
first for one sequence; GQA query head ``h`` reads KV head ``h // (Hq // Hkv)``.
"""

from .decode_attention import dense_decode_attention, selected_decode_attention, sparse_decode_attention
from .decode_stats import DecodeStats
from .landmarks import chunk_landmarks, outlier_chunks
from .lowrank import LowRankKeys, fit_lowrank, rebuild, rebuild_rotated, reconstruction_error
from .nosa import nosa_select_positions
from .params import FullKvParams, KvPolicyParams, NosaKvParams, ShadowKvParams, StreamingKvParams, parse_kv_params
from .registry import StoreRegistry
from .resident import ResidentChunks
from .rope import apply_rope, rope_inv_freq
from .selection import Selection, select_positions
from .store import SequenceKvStore
from .streaming import streaming_positions

__all__ = [
    "DecodeStats",
    "FullKvParams",
    "KvPolicyParams",
    "LowRankKeys",
    "NosaKvParams",
    "ResidentChunks",
    "Selection",
    "SequenceKvStore",
    "ShadowKvParams",
    "StoreRegistry",
    "StreamingKvParams",
    "apply_rope",
    "chunk_landmarks",
    "dense_decode_attention",
    "fit_lowrank",
    "nosa_select_positions",
    "outlier_chunks",
    "parse_kv_params",
    "rebuild",
    "rebuild_rotated",
    "reconstruction_error",
    "rope_inv_freq",
    "select_positions",
    "selected_decode_attention",
    "sparse_decode_attention",
    "streaming_positions",
]
