import math

import torch

from attention_backends.reference import masked_attention
from attention_backends.sparse_index import SparseIndex

from sparse_cases import random_qkv


def test_reference_is_a_masked_softmax_written_out():
    q, k, v = random_qkv(12, q_heads=2, kv_heads=1, head_dim=8)
    mask = torch.tensor([[True, False], [False, True]]).expand(2, 2, 2)
    index = SparseIndex.from_block_mask(mask, 12, 8)
    out = masked_attention(q, k, v, index)
    scale = 1 / math.sqrt(8)
    for h in range(2):
        for i in range(12):
            keys = [j for j in range(i + 1) if (j // 8) == (i // 8)]
            w = torch.softmax(torch.stack([q[h, i] @ k[0, j] * scale for j in keys]), 0)
            expected = sum(wj * v[0, j] for wj, j in zip(w, keys))
            torch.testing.assert_close(out[h, i], expected, atol=1e-6, rtol=1e-5)
