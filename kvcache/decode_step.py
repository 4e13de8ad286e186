"""One decode token of one request through the compressed store of one KV group (engine-side step).

The engine's attention layer calls :func:`group_decode` for every decode row whose layer has a
compressed group (:mod:`kvcache.head_policy`). The store of ``(request, key)`` is created on
the request's first compressed decode step from the context the engine already holds (its
paged cache: post-RoPE keys, from which the pre-RoPE keys are recovered by undoing the
rotation), then extended by one token per step. A store whose length does not match the
position (a request recomputed after preemption, a prefix-cache hit, a resumed stream) is
rebuilt from the context, so a store is always the exact history of its request.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from .head_policy import KvGroup
from .registry import StoreRegistry
from .rope import remove_rope
from .store import DecodeStats


@dataclass(frozen=True)
class RopeSpec:
    """The model's key rotation: ``inv_freq float32 [D/2]`` and its cos/sin multiplier."""

    inv_freq: torch.Tensor
    attention_scaling: float = 1.0


def group_decode(
    stores: StoreRegistry,
    request_id: Hashable,
    key: Hashable,
    group: KvGroup,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    position: int,
    read_context: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    rope: RopeSpec,
    scale: float,
) -> tuple[torch.Tensor, DecodeStats]:
    """Attention output ``[len(group.q_heads), D]`` of the decode token at ``position``, and what it read.

    ``q [Hq, D]``: the layer's (local) query heads; ``k_new, v_new [Hkv, D]``: the token's
    post-RoPE key and value for the layer's (local) KV heads; ``read_context()`` returns
    ``k, v [Hkv, position + 1, D]``, the whole context including this token (called only when
    the store is (re)built).
    """
    kv = list(group.kv_heads)
    store = stores.find(request_id, key)
    if store is None or store.seq_len != position:
        k_all, v_all = read_context()
        k_all, v_all = k_all[kv], v_all[kv]
        positions = torch.arange(position + 1, device=k_all.device)
        k_pre = remove_rope(k_all, positions, inv_freq=rope.inv_freq, attention_scaling=rope.attention_scaling)
        store = stores.create(request_id, key, group.params, len(kv), k_all.shape[-1], inv_freq=rope.inv_freq,
                              attention_scaling=rope.attention_scaling, device=k_all.device, dtype=k_all.dtype)
        store.prefill(k_pre, k_all, v_all)
    else:
        k_post = k_new[kv].unsqueeze(1)
        k_pre = remove_rope(k_post, torch.tensor([position], device=k_post.device), inv_freq=rope.inv_freq,
                            attention_scaling=rope.attention_scaling)
        store.append(k_pre, k_post, v_new[kv].unsqueeze(1))
    return store.attend(q[list(group.q_heads)], scale)
