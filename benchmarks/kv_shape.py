"""KV-cache bytes of a model per token, from its ``config.json`` (the benchmarks' pool sizing and accounting)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class KvShape:
    """Layers, KV heads and head size of a decoder: what one token's K and V occupy."""

    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model: Path) -> KvShape:
        config = json.loads((model / "config.json").read_text())
        heads = config["num_attention_heads"]
        return cls(layers=config["num_hidden_layers"], kv_heads=config.get("num_key_value_heads", heads),
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads)

    def head_token_bytes(self, dtype: str) -> int:
        """K and V of one KV head, one token."""
        return 2 * self.head_dim * DTYPE_BYTES[dtype]

    def layer_token_bytes(self, dtype: str) -> int:
        return self.kv_heads * self.head_token_bytes(dtype)

    def token_bytes(self, dtype: str) -> int:
        """Every layer's K and V of one token (vLLM's dense pool per token)."""
        return self.layers * self.layer_token_bytes(dtype)
