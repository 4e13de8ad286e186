import pytest
import torch

from attention_backends import sparse_attention
from attention_backends.inputs import check_qk, check_qkv, expand_kv
from attention_backends.patterns import AShapeParams, DenseParams

from sparse_cases import random_qkv


def test_check_returns_sizes_and_default_scale():
    q, k, v = random_qkv(10, q_heads=6, kv_heads=2, head_dim=16)
    shape = check_qkv(q, k, v)
    assert (shape.num_q_heads, shape.num_kv_heads, shape.seq_len, shape.head_dim) == (6, 2, 10, 16)
    assert shape.group_size == 3
    assert shape.scale == pytest.approx(0.25)


@pytest.mark.parametrize(
    "q_shape, k_shape, message",
    [
        ((4, 10, 16), (2, 11, 16), "same seq_len"),
        ((4, 10, 16), (2, 10, 8), "same head_dim"),
        ((4, 10, 16), (3, 10, 16), "multiple"),
        ((10, 16), (2, 10, 16), r"\[heads, seq_len, head_dim\]"),
        ((4, 0, 16), (2, 0, 16), "empty"),
    ],
)
def test_bad_shapes_raise(q_shape, k_shape, message):
    with pytest.raises(ValueError, match=message):
        check_qk(torch.zeros(q_shape), torch.zeros(k_shape))


def test_non_causal_dtype_scale_and_v_errors():
    q, k, v = random_qkv(8)
    with pytest.raises(ValueError, match="causal"):
        check_qkv(q, k, v, causal=False)
    with pytest.raises(ValueError, match="dtype"):
        check_qk(q, k.double())
    with pytest.raises(ValueError, match="scale"):
        check_qk(q, k, scale=0.0)
    with pytest.raises(ValueError, match="v must have the shape"):
        check_qkv(q, k, v[:, :4])


def test_public_entry_point_rejects_bad_arguments():
    q, k, v = random_qkv(8)
    with pytest.raises(ValueError, match="causal"):
        sparse_attention(q, k, v, AShapeParams(), causal=False)
    with pytest.raises(ValueError, match="same seq_len"):
        sparse_attention(q, k[:, :5], v[:, :5], DenseParams())


def test_expand_kv_repeats_each_head_for_its_group():
    x = torch.arange(2).view(2, 1, 1).float()
    assert expand_kv(x, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]
