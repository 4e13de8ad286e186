"""One decode token of one request through the compressed store of one KV group (engine-side step).

The engine's attention layer calls :func:`advance` for every decode row whose layer has a
compressed group (:mod:`kvcache.head_policy`), then :func:`attend_all` once for the layer's rows
(the C kernel runs their steps together, over the engine's threads); :func:`group_decode` is the
two for one row. The store of ``(request, key)`` is created on
the request's first compressed decode step from the context the engine already holds (its
paged cache: post-RoPE keys, from which the pre-RoPE keys are recovered by undoing the
rotation), then extended by one token per step. A store whose length does not match the
position (a request recomputed after preemption, a prefix-cache hit, a resumed stream) is
rebuilt from the context, so a store is always the exact history of its request.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from .decode_stats import DecodeStats
from .head_policy import KvGroup
from .registry import StoreRegistry
from .rope import RopeTable, inverse_rope_table, remove_rope
from .native_step import attend_native_many
from .params import low_rank_keys
from .store import SequenceKvStore


@dataclass(frozen=True)
class RopeSpec:
    """The model's key rotation: ``inv_freq float32 [D/2]`` and its cos/sin multiplier."""

    inv_freq: torch.Tensor
    attention_scaling: float = 1.0
    inverse: RopeTable = field(init=False, repr=False, compare=False)  # what remove_rope reads

    def __post_init__(self) -> None:
        object.__setattr__(self, "inverse", inverse_rope_table(self.inv_freq, self.attention_scaling))

    def unrotate(self, k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Pre-RoPE keys of post-RoPE ``k [H, L, D]`` at ``positions [L]``."""
        return remove_rope(k, positions, inv_freq=self.inv_freq, attention_scaling=self.attention_scaling,
                           table=self.inverse)


def pre_rope_rows(k_new: torch.Tensor, positions: list[int], rope: RopeSpec) -> torch.Tensor:
    """Pre-RoPE keys ``[R, Hkv, D]`` of ``R`` decode tokens ``k_new [R, Hkv, D]`` at ``positions`` (one call for a batch)."""
    pos = torch.tensor(positions, dtype=torch.int64)
    return rope.unrotate(k_new.transpose(0, 1), pos).transpose(0, 1)


def advance(
    stores: StoreRegistry,
    request_id: Hashable,
    key: Hashable,
    group: KvGroup,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    position: int,
    read_context: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    rope: RopeSpec,
    k_pre_new: torch.Tensor | None = None,
) -> SequenceKvStore:
    """The store of ``(request_id, key)`` holding the sequence up to and including the decode token at ``position``.

    ``k_new, v_new [Hkv, D]``: the token's post-RoPE key and value for the layer's (local) KV
    heads; ``read_context()`` returns ``k, v [Hkv, position + 1, D]``, the whole context including
    this token (called only when the store is (re)built). ``k_pre_new [Hkv, D]``: the token's
    pre-RoPE key where the caller has it already (:func:`pre_rope_rows`; needed only by :func:`low_rank_keys` groups).
    """
    kv = group.kv_index
    store = stores.find(request_id, key)
    if store is None or store.seq_len != position:
        k_all, v_all = read_context()
        k_all, v_all = k_all[kv], v_all[kv]
        positions = torch.arange(position + 1, device=k_all.device)
        k_pre = rope.unrotate(k_all, positions) if low_rank_keys(group.params) else k_all  # unread otherwise
        store = stores.create(request_id, key, group.params, len(group.kv_heads), k_all.shape[-1], inv_freq=rope.inv_freq,
                              attention_scaling=rope.attention_scaling, device=k_all.device, dtype=k_all.dtype)
        store.prefill(k_pre, k_all, v_all)
    else:
        k_post = k_new[kv].unsqueeze(1)
        if k_pre_new is not None:
            k_pre = k_pre_new[kv].unsqueeze(1)
        elif store.low_rank:
            k_pre = rope.unrotate(k_post, torch.tensor([position], device=k_post.device))
        else:
            k_pre = k_post  # unread
        store.append(k_pre, k_post, v_new[kv].unsqueeze(1))
    return store


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

    ``q [Hq, D]``: the layer's (local) query heads; the rest as :func:`advance`.
    """
    store = advance(stores, request_id, key, group, k_new, v_new, position, read_context, rope)
    return store.attend(q[group.q_index], scale)


def attend_all(steps: list[tuple[SequenceKvStore, torch.Tensor]], scale: float, threads: int = 1,
               ) -> list[tuple[torch.Tensor, DecodeStats] | Exception]:
    """``store.attend(q, scale)`` of every ``(store, q)`` (distinct stores): the result or the exception it raised.

    The steps the C kernel covers run in one call over up to ``threads`` threads
    (:func:`kvcache.native_step.attend_native_many`); the others run one by one.
    """
    results: list[tuple[torch.Tensor, DecodeStats] | Exception | None] = [None] * len(steps)
    native = [i for i, (store, _) in enumerate(steps) if store.native and store.compressed]
    for i, result in zip(native, attend_native_many([steps[i] for i in native], scale, threads)):
        results[i] = result
    kernel_declined = {i for i in native if results[i] is None}  # its PyTorch path, without asking the kernel again
    for i, (store, q) in enumerate(steps):
        if results[i] is None:
            try:
                results[i] = store.attend_reference(q.to(store.device), scale) if i in kernel_declined else store.attend(q, scale)
            except Exception as exc:  # noqa: BLE001 - reported per step
                results[i] = exc
    return results  # type: ignore[return-value]
