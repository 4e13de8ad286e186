"""benchmarks/kv_shape.py: KV bytes per token from a model's config.json."""

from __future__ import annotations

import json

from benchmarks.kv_shape import KvShape


def test_kv_bytes_per_token_from_config(tmp_path) -> None:
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = KvShape.of(tmp_path)
    assert shape == KvShape(layers=30, kv_heads=3, head_dim=64)  # head_dim from hidden_size / heads
    assert shape.head_token_bytes("bfloat16") == 256 and shape.token_bytes("bfloat16") == 23040  # the default model
    assert shape.token_bytes("float32") == 2 * shape.token_bytes("bfloat16")
    config.pop("num_key_value_heads")
    (tmp_path / "config.json").write_text(json.dumps({**config, "head_dim": 128}))
    assert KvShape.of(tmp_path) == KvShape(layers=30, kv_heads=9, head_dim=128)  # MHA, explicit head_dim
