"""Triton kernel tests on CPU through the interpreter (``TRITON_INTERPRET=1``), small shapes only."""

import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the kernel module's @triton.jit decorators

import pytest
import torch
import triton.language as tl

import attention_backends.triton_kernels as triton_kernels
from attention_backends.interface import estimate_index
from attention_backends.reference import masked_attention

from sparse_cases import SPARSE_CASES, random_qkv

if type(triton_kernels._sparse_prefill_kernel).__name__ != "InterpretedFunction":
    triton_kernels = importlib.reload(triton_kernels)  # imported earlier without the interpreter
# triton.language's own @jit helpers (tl.zeros) are bound when triton is first imported: a test module
# collected earlier that imports vLLM at module level imports triton without the interpreter
if type(tl.zeros).__name__ != "InterpretedFunction":
    raise RuntimeError("triton.language was imported before TRITON_INTERPRET=1 was set: a test module collected "
                       "before this one imports vLLM (or triton) at module level; import it inside its tests")


@pytest.mark.parametrize("params", SPARSE_CASES, ids=lambda p: p.pattern.value)
def test_triton_equals_reference_fp32(params):
    q, k, v = random_qkv(70, q_heads=4, kv_heads=2)
    index = estimate_index(q, k, params)
    got = triton_kernels.triton_sparse_attention(q, k, v, index, cols_per_step=16)
    torch.testing.assert_close(got, masked_attention(q, k, v, index), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("seq_len", (1, 16))
def test_triton_short_sequences(seq_len):
    q, k, v = random_qkv(seq_len, q_heads=2, kv_heads=1)
    index = estimate_index(q, k, SPARSE_CASES[2])
    got = triton_kernels.triton_sparse_attention(q, k, v, index, cols_per_step=16)
    torch.testing.assert_close(got, masked_attention(q, k, v, index), atol=2e-6, rtol=1e-5)


def test_triton_bf16_within_tolerance():
    q, k, v = random_qkv(50, q_heads=2, kv_heads=1, dtype=torch.bfloat16)
    index = estimate_index(q, k, SPARSE_CASES[2])
    got = triton_kernels.triton_sparse_attention(q, k, v, index, cols_per_step=16)
    assert got.dtype == torch.bfloat16
    expected = masked_attention(q.float(), k.float(), v.float(), index)
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=2e-2)


def test_triton_rejects_unsupported_sizes():
    q, k, v = random_qkv(20, head_dim=12)
    index = estimate_index(q, k, SPARSE_CASES[0])
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        triton_kernels.triton_sparse_attention(q, k, v, index)
