import pytest
import torch

from attention_backends import (
    DenseParams,
    VerticalSlashParams,
    attention_recall,
    dense_attention,
    estimate_index,
    run_index,
    sparse_attention,
)
from attention_backends.interface import resolve_backend

from sparse_cases import SPARSE_CASES, full_budget_cases, random_qkv


@pytest.mark.parametrize("seq_len", (7, 16, 45))
@pytest.mark.parametrize("backend", ("reference", "gather"))
def test_full_budget_equals_dense_for_every_pattern(seq_len, backend):
    q, k, v = random_qkv(seq_len, q_heads=6, kv_heads=3)
    dense = dense_attention(q, k, v)
    for params in full_budget_cases(seq_len):
        out = sparse_attention(q, k, v, params, backend=backend)
        torch.testing.assert_close(out, dense, atol=2e-6, rtol=1e-5, msg=params.pattern.value)
    torch.testing.assert_close(sparse_attention(q, k, v, DenseParams()), dense)


def test_full_budget_bf16_tolerance():
    q, k, v = random_qkv(40, dtype=torch.bfloat16)
    dense = dense_attention(q.float(), k.float(), v.float())
    for params in full_budget_cases(40):
        out = sparse_attention(q, k, v, params, backend="gather")
        torch.testing.assert_close(out.float(), dense, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("params", SPARSE_CASES, ids=lambda p: p.pattern.value)
def test_estimators_are_causal_deterministic_and_reused(params):
    q, k, v = random_qkv(90)
    index = estimate_index(q, k, params)
    index.validate()  # causal blocks/columns, no duplicates, diagonal kept
    assert torch.equal(estimate_index(q, k, params).to_mask(), index.to_mask())
    planned = sparse_attention(q, k, v, params, backend="gather", index=index)
    torch.testing.assert_close(planned, run_index(q, k, v, index, backend="gather"))


def test_dense_has_no_index_and_backends_resolve():
    q, k, _ = random_qkv(8)
    with pytest.raises(ValueError, match="no index estimator"):
        estimate_index(q, k, DenseParams())  # type: ignore[arg-type]
    assert resolve_backend("auto", torch.device("cpu")) in ("flex", "gather")
    block_only = estimate_index(*random_qkv(40)[:2], SPARSE_CASES[1])
    assert resolve_backend("auto", torch.device("cpu"), block_only) == "gather"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("fast", torch.device("cpu"))  # type: ignore[arg-type]


def test_gather_equals_reference_on_captured_heads(captured):
    layer = captured[2]
    params = VerticalSlashParams(n_vertical=128, n_slash=32)
    index = estimate_index(layer.q, layer.k, params)
    got = run_index(layer.q, layer.k, layer.v, index, backend="gather")
    expected = run_index(layer.q, layer.k, layer.v, index, backend="reference")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert attention_recall(layer.q, layer.k, index).mean() > 0.5
