"""A windowed layer's context: from the paged cache while it is whole, from the captured history after."""

from __future__ import annotations

import pytest
import torch

from attention_backends.windowed import HistoryMissing, pool_window, windowed_context
from kvcache.registry import StoreRegistry
from paged_cache import write_with_vllm

BS, HKV, D, WINDOW = 16, 3, 64, 40


def _cache_with(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache holding ``k, v [N, Hkv, D]`` over a shuffled block table; the table."""
    pytest.importorskip("vllm")
    n = k.shape[0]
    table = torch.randperm(-(-n // BS) + 2, generator=torch.Generator().manual_seed(1))
    slots = (table[: -(-n // BS)].repeat_interleave(BS) * BS + torch.arange(BS).repeat(-(-n // BS)))[:n]
    cache = torch.zeros(table.numel(), HKV, BS, 2 * D)
    write_with_vllm(cache, k, v, slots)
    return cache, table


def test_history_starts_from_the_pool_then_takes_each_step_and_survives_freed_blocks() -> None:
    k, v = torch.randn(2, 100, HKV, D).unbind(0)
    cache, table = _cache_with(k, v)
    reg = StoreRegistry()
    # chunk [0, 30) ends below the window: nothing captured yet (the caller runs vLLM's kernel)
    # chunk [30, 70) crosses it and starts before position WINDOW: the history starts from the pool
    got_k, got_v = windowed_context(reg, "r", 4, cache, table, 70, k[30:70], v[30:70], WINDOW)
    assert torch.equal(got_k, k[:70].transpose(0, 1)) and torch.equal(got_v, v[:70].transpose(0, 1))
    # vLLM frees the blocks before the window: later steps read the history, not the pool
    cache[table[:2]] = float("nan")
    got_k, got_v = windowed_context(reg, "r", 4, cache, table, 100, k[70:100], v[70:100], WINDOW)
    assert torch.equal(got_k, k.transpose(0, 1)) and torch.equal(got_v, v.transpose(0, 1))
    assert reg.offload_bytes() >= 2 * 100 * HKV * D * 4
    reg.drop_history("r", 4)
    assert reg.total_bytes() == 0


def test_missing_history_past_the_window_is_an_error_and_the_pool_window_is_what_remains() -> None:
    k, v = torch.randn(2, 100, HKV, D).unbind(0)
    cache, table = _cache_with(k, v)
    reg = StoreRegistry()
    with pytest.raises(HistoryMissing, match="no history of layer 2 and 90 tokens"):
        windowed_context(reg, "r", 2, cache, table, 100, k[90:], v[90:], WINDOW)
    with pytest.raises(HistoryMissing, match="no request"):
        windowed_context(reg, None, 2, cache, table, 100, k[90:], v[90:], WINDOW)
    assert reg.total_bytes() == 0
    wk, wv = pool_window(cache, table, 100, WINDOW)  # from the block holding position 60
    assert torch.equal(wk, k[48:].transpose(0, 1)) and torch.equal(wv, v[48:].transpose(0, 1))
