"""Context of a request in a *windowed* layer: vLLM's pool keeps a sliding window, the history the rest.

With ``--kv-window-layers`` the server gives every layer whose KV heads are all compressed a
sliding-window KV spec of ``W = kv_threshold`` tokens (:func:`server.sparse_setup`), so vLLM's
pool holds at most ``W`` tokens of those layers per request and frees older blocks — also in the
middle of a chunked prefill. Query ``p`` of vLLM's kernel then sees keys ``(p - W, p]``: exact
while a request is shorter than ``W``. From ``W`` tokens on, our backend computes those rows
itself from the request's exact :class:`kvcache.history.KvHistory` (prefill) or its compressed
store (decode, built from the history, which is then dropped).

A history is started from the paged cache the first time a request reaches ``W`` tokens; that
read is exact while the step starts before position ``W`` (vLLM has freed nothing yet: it skips
the tokens before ``num_computed - W + 1``). Later steps append the rows they write.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from kvcache.registry import StoreRegistry

from .paged_kv import gather_sequence_kv


class HistoryMissing(RuntimeError):
    """The windowed layer's tokens before the window are gone and no history holds them."""


def windowed_context(
    stores: StoreRegistry,
    request: Hashable | None,
    layer: int,
    kv_cache: torch.Tensor,
    block_ids: torch.Tensor,
    seq_len: int,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    window: int,
    isa: str = "vec",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys, values ``[Hkv, seq_len, D]`` of ``request`` in a windowed layer, this step's rows captured.

    ``k_rows, v_rows [T, Hkv, D]``: the keys/values this step writes, positions
    ``[seq_len - T, seq_len)`` (already in ``kv_cache``, in the layout of ``isa``). Raises
    :class:`HistoryMissing` when the request is unknown, or has no history and its earlier tokens
    may have left the pool.
    """
    if request is None:
        raise HistoryMissing("no request writes this row's slot")
    start = seq_len - k_rows.shape[0]
    history = stores.history(request, layer)
    if history is None:
        if start >= window:
            raise HistoryMissing(f"request {request!r}: no history of layer {layer} and {start} tokens "
                                 f"before this step (window {window})")
        k_all, v_all = gather_sequence_kv(kv_cache, block_ids, seq_len, isa)
        history = stores.history(request, layer, k_all.shape[0], k_all.shape[2], dtype=k_all.dtype)
        assert history is not None
        history.extend(0, k_all, v_all)
    else:
        history.extend(start, k_rows.transpose(0, 1), v_rows.transpose(0, 1))
    if len(history) != seq_len:
        raise HistoryMissing(f"request {request!r}: history of layer {layer} holds {len(history)} tokens, "
                             f"the sequence {seq_len}")
    return history.view()


def pool_window(kv_cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int, window: int,
                isa: str = "vec") -> tuple[torch.Tensor, torch.Tensor]:
    """The keys/values still in the pool: positions ``[first, seq_len)`` from the block holding ``seq_len - window``.

    Queries at the end read them as vLLM's sliding-window kernel does (end-aligned causal).
    """
    bs = kv_cache.shape[2]
    first_block = max(seq_len - window, 0) // bs
    return gather_sequence_kv(kv_cache, block_ids[first_block:], seq_len - first_block * bs, isa)
