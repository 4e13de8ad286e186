"""Exact KV history of one request's windowed layer, kept on the offload tier until its store takes it over.

A *windowed* layer (every KV head compressed, see :meth:`kvcache.head_policy.KvPlan.windowed_layers`)
gets a sliding-window KV spec in vLLM's pool, so vLLM frees the blocks of tokens that left the
window, also in the middle of a chunked prefill. Whatever a later step needs from before the
window — the earlier chunks' keys/values for exact or sparse prefill, the context a decode store
is built from — must be captured before vLLM frees it. :class:`KvHistory` is that capture: the
post-RoPE keys and the values of positions ``[0, len)`` of one layer, appended as the engine
writes them, in host memory (offload tier), and dropped once the request's decode store is
built from it (the store then holds the compressed history).
"""

from __future__ import annotations

import torch

from .buffers import TokenBuffer, offload_device_pinned


class KvHistory:
    """Post-RoPE keys and values ``[Hkv, len, D]`` of positions ``[0, len)`` of one sequence and layer."""

    def __init__(self, num_kv_heads: int, head_dim: int, *, dtype: torch.dtype) -> None:
        pinned = offload_device_pinned()
        self.k = TokenBuffer(num_kv_heads, head_dim, dtype=dtype, device="cpu", pinned=pinned)
        self.v = TokenBuffer(num_kv_heads, head_dim, dtype=dtype, device="cpu", pinned=pinned)

    def __len__(self) -> int:
        return len(self.k)

    def extend(self, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add the keys/values ``[Hkv, T, D]`` of positions ``[start, start + T)``.

        Positions already held are skipped (a step may rewrite the tail); a gap raises
        ``ValueError`` (the history would no longer be exact).
        """
        if start > len(self):
            raise ValueError(f"history holds {len(self)} positions; cannot add from position {start}")
        skip = len(self) - start
        if skip < k.shape[1]:
            self.k.append(k[:, skip:])
            self.v.append(v[:, skip:])

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys, values ``[Hkv, len, D]`` (views: do not keep them across :meth:`extend`)."""
        return self.k.view(), self.v.view()

    def pool_bytes(self) -> int:
        return 0

    def offload_bytes(self) -> int:
        return self.k.nbytes() + self.v.nbytes()

    def free(self) -> None:
        self.k.free()
        self.v.free()
