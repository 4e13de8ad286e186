"""Test helper: a paged CPU KV cache written by vLLM's own cache-write op."""

from __future__ import annotations

import torch


def write_with_vllm(cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    """Write ``k, v [T, Hkv, D]`` at ``slots [T]`` of ``cache [NB, Hkv, B, 2D]`` (the ``vec`` ISA layout)."""
    from vllm import _custom_ops as ops

    from attention_backends.cpu_kernel import split_cache

    key_cache, value_cache = split_cache(cache)
    ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, "vec",
                                   k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")
