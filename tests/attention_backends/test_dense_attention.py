import math

import torch

from attention_backends.dense import dense_attention

from sparse_cases import random_qkv


def test_dense_matches_explicit_causal_softmax_with_gqa():
    q, k, v = random_qkv(33, q_heads=6, kv_heads=2)
    kk, vv = k.repeat_interleave(3, 0), v.repeat_interleave(3, 0)
    logits = q @ kk.transpose(1, 2) / math.sqrt(16) + torch.full((33, 33), -math.inf).triu(1)
    torch.testing.assert_close(dense_attention(q, k, v), torch.softmax(logits, -1) @ vv, atol=1e-5, rtol=1e-5)


def test_dense_respects_an_explicit_scale():
    q, k, v = random_qkv(5)
    assert not torch.allclose(dense_attention(q, k, v, scale=0.01), dense_attention(q, k, v))
