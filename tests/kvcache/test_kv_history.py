"""The exact history of a windowed layer: appended in order, on the offload tier, freed with its request."""

from __future__ import annotations

import pytest
import torch

from kvcache.history import KvHistory
from kvcache.registry import StoreRegistry


def test_history_extends_in_order_skips_rewritten_rows_and_refuses_gaps() -> None:
    k, v = torch.randn(2, 3, 10, 4).unbind(0)
    h = KvHistory(3, 4, dtype=torch.float32)
    h.extend(0, k[:, :6], v[:, :6])
    h.extend(4, k[:, 4:8], v[:, 4:8])  # positions 4, 5 are held already
    got_k, got_v = h.view()
    assert torch.equal(got_k, k[:, :8]) and torch.equal(got_v, v[:, :8])
    with pytest.raises(ValueError, match="cannot add from position 9"):
        h.extend(9, k[:, 9:], v[:, 9:])
    assert h.pool_bytes() == 0 and h.offload_bytes() >= 2 * 8 * 3 * 4 * 4
    h.free()
    assert len(h) == 0 and h.offload_bytes() == 0


def test_registry_holds_histories_beside_stores_and_frees_them_with_the_request() -> None:
    reg = StoreRegistry()
    assert reg.history("r", 5) is None
    h = reg.history("r", 5, 3, 4, dtype=torch.float32)
    assert h is not None and reg.history("r", 5) is h and reg.find("r", ("history", 5)) is None
    h.extend(0, torch.randn(3, 7, 4), torch.randn(3, 7, 4))
    assert reg.offload_bytes() == h.offload_bytes() > 0 and reg.pool_bytes() == 0
    reg.drop_history("r", 5)
    assert reg.history("r", 5) is None and reg.total_bytes() == 0
    reg.history("r", 6, 3, 4, dtype=torch.float32).extend(0, torch.randn(3, 2, 4), torch.randn(3, 2, 4))
    assert reg.free("r") > 0 and reg.total_bytes() == 0 and len(reg) == 0
