"""Decode-time KV statistics per head and the KV policy rules.

ShadowKV (Sun et al., 2024) keeps pre-RoPE keys in a low-rank form, so the relative error of a
rank-r reconstruction of a head's pre-RoPE keys says how well it compresses. Streaming heads
(A-shape prefill) can drop the middle of the cache (StreamingLLM). :func:`choose_kv_policy` is
the rule the profiler applies (:mod:`profiles.kv_choice`), driven by measured criteria:

* :func:`layer_lowrank_error`: relative Frobenius error of the rank-r fit of a layer's pre-RoPE
  keys with heads concatenated along features (the layout :mod:`kvcache.lowrank` stores);
* :func:`shadowkv_decode_recall`: decode-time attention recall of the budgeted ShadowKV selection
  (:mod:`kvcache.selection`) on calibration q/k: for sampled query rows ``t``, the row is treated
  as the decode query of the prefix ``[0, t]`` (landmarks and outliers of that prefix), and the
  recall is the exact softmax mass of the row that falls on the selected positions;
* :func:`nosa_decode_recall`: the same for consecutive rows with the locality constraint carried
  from row to row (:mod:`kvcache.nosa`);
* :func:`streaming_decode_recall`: the same for sinks + window only;
* :func:`shadowkv_output_error`: end-to-end relative error of the decode output through the
  store (prefill fit, decode appends), against dense attention;
* :func:`smallest_rank`: the per-layer rank that meets a low-rank error bound.

Thresholds (:data:`TARGET_DECODE_RECALL`, :data:`MAX_LOWRANK_ERROR`) are documented where defined.
"""

from __future__ import annotations

import torch

from attention_backends import AShapeParams, PatternParams
from kvcache.decode_attention import decode_recall as mass_on_selection
from kvcache.landmarks import Int8Landmarks, chunk_landmarks, outlier_chunks
from kvcache.lowrank import relative_error
from kvcache.nosa import nosa_select_positions
from kvcache.params import NosaKvParams, ShadowKvParams, StreamingKvParams
from kvcache.selection import local_start, select_positions
from kvcache.streaming import streaming_mask

from .schema import KvChoice

DEFAULT_RANK = 32
"""Rank recorded with the low-rank error when none is given (:class:`kvcache.params.ShadowKvParams`' default)."""

TARGET_DECODE_RECALL = 0.95
"""Default decode recall a compressed policy must reach (the profiler's prefill target)."""

MAX_LOWRANK_ERROR = 0.15
"""Default largest relative error of the layer's low-rank pre-RoPE keys for ``shadowkv`` / ``nosa``.

A relative Frobenius error ``e`` loses ``e**2`` of the key energy (0.15 -> 2.3%); the selection
recall is measured on exact keys, so this bound keeps the rebuilt keys close to those.
"""


@torch.no_grad()
def layer_lowrank_error(k_pre_rope: torch.Tensor, rank: int) -> float:
    """Relative error of the rank-``rank`` fit of ``[Hkv, N, D]`` keys with heads concatenated (the stored layout)."""
    if rank <= 0:
        raise ValueError(f"rank must be positive; got {rank}")
    return relative_error(k_pre_rope, rank)


@torch.no_grad()
def smallest_rank(k_pre_rope: torch.Tensor, max_error: float = MAX_LOWRANK_ERROR, multiple: int = 8) -> int:
    """Smallest rank (a multiple of ``multiple``, at most ``Hkv*D``) whose layer fit error is ``<= max_error``.

    ``k_pre_rope [Hkv, N, D]``; the per-layer rank for :class:`kvcache.params.ShadowKvParams`.
    """
    if not 0 <= max_error < 1 or multiple <= 0:
        raise ValueError(f"max_error must be in [0, 1) and multiple > 0; got {max_error}, {multiple}")
    hkv, n, d = k_pre_rope.shape
    s2 = torch.linalg.svdvals(k_pre_rope.permute(1, 0, 2).reshape(n, hkv * d).double()) ** 2
    tail = (s2.flip(0).cumsum(0).flip(0) / s2.sum().clamp(min=1e-300)).sqrt()  # tail[r] = error at rank r
    width = hkv * d
    for rank in range(multiple, width + multiple, multiple):
        r = min(rank, width)
        if r >= tail.numel() or float(tail[r]) <= max_error:
            return r
    return width


MAX_DECODE_OUTPUT_ERROR = 0.05
"""Default largest mean relative error of a head's decode output through the ShadowKV store.

Measured on SmolLM2-135M at 8K (layers 4 / 12 / 20, budget 2048, 16 last rows): rank 32 gives
0.10-0.44 / 0.003-0.10 / 0.01-0.15 per query head, full rank (selection only) 0.03-0.11 /
0.0-0.09 / 0.004-0.08: low-rank error alone does not predict the output error, so both are used.
"""


def _check_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if q.dim() != 3 or k.dim() != 3 or q.shape[1] != k.shape[1] or q.shape[2] != k.shape[2] or q.shape[0] % k.shape[0]:
        raise ValueError(f"q must be [Hq, N, D] and k [Hkv, N, D] with Hq a multiple of Hkv; got {tuple(q.shape)}, {tuple(k.shape)}")
    rows = rows.to(torch.int64).cpu()
    if rows.numel() == 0 or rows.min() < 0 or rows.max() >= q.shape[1]:
        raise ValueError(f"rows must be a non-empty set of positions in [0, {q.shape[1]})")
    return rows


@torch.no_grad()
def shadowkv_decode_recall(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, params: ShadowKvParams | None = None, scale: float | None = None
) -> torch.Tensor:
    """Mean decode recall ``float32 [Hq]`` of the budgeted ShadowKV selection for query ``rows`` of post-RoPE ``q [Hq, N, D]``, ``k [Hkv, N, D]``."""
    p = params or ShadowKvParams()

    def pick(t: int, n: int, marks: Int8Landmarks, outliers: torch.Tensor, previous: torch.Tensor | None):
        return select_positions(q[:, t], marks.prefix(n // p.chunk), n, chunk=p.chunk, budget=p.budget,
                                n_sink=p.n_sink, n_local=p.n_local, outliers=outliers, scale=scale)

    return _selection_recall(q, k, _check_rows(q, k, rows), p, scale, pick)


def _selection_recall(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, p: ShadowKvParams, scale: float | None,
                      pick) -> torch.Tensor:
    """Mean over ``rows`` (in the given order) of the softmax mass on ``pick``'s selection, per query head.

    ``pick(t, n, landmarks, outliers, previous_chunk_mask)`` returns a selection for row ``t``.
    """
    marks = Int8Landmarks.of(chunk_landmarks(k, p.chunk))  # as the stores keep them
    total = torch.zeros(q.shape[0], dtype=torch.float64)
    previous = None
    for t in rows.tolist():
        n = t + 1
        outliers = outlier_chunks(k[:, : local_start(n, p.n_local, p.chunk)], p.n_outlier_chunks, p.chunk)
        sel = pick(t, n, marks, outliers, previous)
        previous = sel.chunk_mask
        total += mass_on_selection(q[:, t], k[:, :n], sel.mask, scale).double().cpu()
    return (total / rows.numel()).float()


@torch.no_grad()
def nosa_decode_recall(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, params: NosaKvParams | None = None, scale: float | None = None
) -> torch.Tensor:
    """Like :func:`shadowkv_decode_recall` with the locality constraint carried over ``rows`` in increasing order (use consecutive rows)."""
    p = params or NosaKvParams()

    def pick(t: int, n: int, marks: Int8Landmarks, outliers: torch.Tensor, previous: torch.Tensor | None):
        return nosa_select_positions(q[:, t], marks.prefix(n // p.chunk), n, previous, chunk=p.chunk, budget=p.budget,
                                     n_sink=p.n_sink, n_local=p.n_local, outliers=outliers, max_change=p.max_change,
                                     scale=scale)

    return _selection_recall(q, k, _check_rows(q, k, rows).sort().values, p, scale, pick)


@torch.no_grad()
def streaming_decode_recall(
    q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, params: StreamingKvParams | None = None, scale: float | None = None
) -> torch.Tensor:
    """Mean decode recall ``float32 [Hq]`` of sinks + window for query ``rows``."""
    p = params or StreamingKvParams()
    rows = _check_rows(q, k, rows)
    total = torch.zeros(q.shape[0], dtype=torch.float64)
    for t in rows.tolist():
        mask = streaming_mask(k.shape[0], t + 1, p.n_sink, p.n_local, device=k.device)
        total += mass_on_selection(q[:, t], k[:, : t + 1], mask, scale).double().cpu()
    return (total / rows.numel()).float()


@torch.no_grad()
def shadowkv_output_error(
    q: torch.Tensor,
    k_pre_rope: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    params: ShadowKvParams | None = None,
    *,
    inv_freq: torch.Tensor | None = None,
    theta: float = 10000.0,
    attention_scaling: float = 1.0,
) -> torch.Tensor:
    """Mean relative error ``float32 [Hq]`` of the ShadowKV store's decode output against dense attention.

    Replays the store as the engine runs it: prefill of the tokens before the first of ``rows``
    (one low-rank fit), then each later token appended as a decode step and every row of
    ``rows`` (ascending) attended as a decode query. Covers every approximation at once:
    low-rank keys, landmark selection under the budget, pending exact keys.
    ``inv_freq`` / ``theta`` / ``attention_scaling`` must be the model's RoPE (the keys' rotation).
    """
    from kvcache.decode_attention import dense_decode_attention
    from kvcache.store import SequenceKvStore

    p = params or ShadowKvParams()
    rows = _check_rows(q, k, rows).sort().values
    hkv, _, d = k.shape
    store = SequenceKvStore(p, hkv, d, inv_freq=inv_freq, theta=theta, attention_scaling=attention_scaling,
                            device=k.device, dtype=k.dtype)
    t0 = int(rows[0])
    store.prefill(k_pre_rope[:, :t0], k[:, :t0], v[:, :t0])
    total = torch.zeros(q.shape[0], dtype=torch.float64)
    n = t0
    for t in rows.tolist():
        store.append(k_pre_rope[:, n : t + 1], k[:, n : t + 1], v[:, n : t + 1])
        n = t + 1
        out, _ = store.attend(q[:, t])
        ref = dense_decode_attention(q[:, t], k[:, :n], v[:, :n])
        total += ((out - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-12)).double().cpu()
    store.free()
    return (total / rows.numel()).float()


def choose_kv_policy(
    prefill: PatternParams,
    lowrank_err: float,
    decode_recall: float,
    *,
    streaming_recall: float | None = None,
    nosa_recall: float | None = None,
    target_recall: float = TARGET_DECODE_RECALL,
    max_lowrank_error: float = MAX_LOWRANK_ERROR,
    rank: int = DEFAULT_RANK,
    output_error: float | None = None,
    max_output_error: float = MAX_DECODE_OUTPUT_ERROR,
) -> KvChoice:
    """KV policy of one head from measured criteria (first match wins).

    1. ``streaming``: the prefill pattern is A-shape and sinks + window reach ``target_recall``
       (``streaming_recall``; skipped when not measured).
    2. ``nosa``: the locality-constrained selection reaches the target (``nosa_recall``; skipped
       when not measured). NOSA keeps exact keys on the offload tier (``offload_keys``, the
       default), so only its selection loses mass; it holds less in the pool than ShadowKV and
       moves fewer bytes, so it is preferred.
    3. ``shadowkv``: keys compress (``lowrank_err <= max_lowrank_error``) and the budgeted
       selection reaches the target (``decode_recall``).
    4. ``full`` otherwise (e.g. retrieval heads whose mass is spread over many chunks).

    ``lowrank_err`` is measured at ``rank`` (recorded in the params with the recalls). When the
    end-to-end ``output_error`` of the store (:func:`shadowkv_output_error`) was measured, keys
    only count as compressible if it is also ``<= max_output_error``.
    """
    stats = {f"lowrank_error_r{rank}": round(float(lowrank_err), 6), "decode_recall": round(float(decode_recall), 6)}
    if streaming_recall is not None:
        stats["streaming_recall"] = round(float(streaming_recall), 6)
    if nosa_recall is not None:
        stats["nosa_recall"] = round(float(nosa_recall), 6)
    if output_error is not None:
        stats["output_error"] = round(float(output_error), 6)
    compresses = lowrank_err <= max_lowrank_error and (output_error is None or output_error <= max_output_error)
    if isinstance(prefill, AShapeParams) and streaming_recall is not None and streaming_recall >= target_recall:
        policy = "streaming"
    elif nosa_recall is not None and nosa_recall >= target_recall:
        policy = "nosa"
    elif compresses and decode_recall >= target_recall:
        policy = "shadowkv"
    else:
        policy = "full"
    return KvChoice(policy=policy, params=stats)
