"""Reading a sequence back from vLLM's paged CPU KV cache, checked against vLLM's own write op."""

from __future__ import annotations

import pytest
import torch

from attention_backends.paged_kv import gather_sequence_kv
from paged_cache import ISAS, write_with_vllm


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [32, 128])
def test_sequence_scattered_over_blocks_reads_back_exactly(isa: str, dtype: torch.dtype, block_size: int) -> None:
    pytest.importorskip("vllm")
    if isa == "amx" and dtype != torch.bfloat16:
        pytest.skip("vLLM picks amx for bfloat16 caches only")
    g = torch.Generator().manual_seed(0)
    hkv, d, n = 3, 64, 2 * block_size + 17
    block_ids = torch.tensor([5, 1, 3])  # a non-contiguous, unordered block table row
    slots = torch.cat([b * block_size + torch.arange(block_size) for b in block_ids])[:n]
    cache = torch.zeros(6, hkv, block_size, 2 * d, dtype=dtype)
    k = torch.randn(n, hkv, d, generator=g).to(dtype)
    v = torch.randn(n, hkv, d, generator=g).to(dtype)
    write_with_vllm(cache, k, v, slots, isa)
    got_k, got_v = gather_sequence_kv(cache, torch.cat([block_ids, torch.tensor([0, 0])]), n, isa)
    assert torch.equal(got_k, k.transpose(0, 1)) and torch.equal(got_v, v.transpose(0, 1))
    assert got_k.is_contiguous() and got_k.dtype == dtype


def test_short_block_table_is_an_error() -> None:
    cache = torch.zeros(4, 1, 32, 16)
    with pytest.raises(ValueError, match="2 needed for 40 tokens"):
        gather_sequence_kv(cache, torch.tensor([0]), 40)


def test_a_layout_without_a_reader_is_an_error() -> None:
    cache = torch.zeros(4, 1, 32, 16)
    with pytest.raises(ValueError, match="no reader for vLLM's CPU KV-cache layout of ISA 'neon'"):
        gather_sequence_kv(cache, torch.tensor([0]), 10, "neon")
