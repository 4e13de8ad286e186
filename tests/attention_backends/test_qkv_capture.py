"""Capture tests on the real model (skipped when it is not prepared; `make test` prepares it)."""

from pathlib import Path

import pytest
import torch

from attention_backends.a_shape import estimate_a_shape
from attention_backends.capture import CaptureConfig, apply_rope, capture_qkv, document_ids, load_model, stream_layers
from attention_backends.dense import dense_attention
from attention_backends.metrics import attention_recall
from attention_backends.patterns import AShapeParams


def test_config_cache_key_and_rope_factor(tmp_path: Path):
    base = CaptureConfig(model_dir=tmp_path, seq_len=2048, layers=(1, 2))
    assert base.rope_factor() == 1.0
    assert CaptureConfig(model_dir=tmp_path, seq_len=32768, layers=(1,)).rope_factor() == 4.0
    assert CaptureConfig(model_dir=tmp_path, seq_len=9000, layers=(1,)).rope_factor() == 2.0
    other = CaptureConfig(model_dir=tmp_path, seq_len=2048, layers=(1, 3))
    assert base.cache_path(tmp_path) != other.cache_path(tmp_path)
    assert base.cache_path(tmp_path) == CaptureConfig(model_dir=tmp_path, seq_len=2048, layers=(2, 1)).cache_path(tmp_path)


def test_a_cached_superset_of_layers_serves_a_subset(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the cache answers
    cache = tmp_path / "cache"
    cache.mkdir()
    stored = CaptureConfig(model_dir=model, seq_len=8, layers=(2, 5, 9))
    entries = [
        {"layer": i, "q": torch.full((2, 8, 4), float(i)), "k": torch.zeros(1, 8, 4), "v": torch.zeros(1, 8, 4), "k_pre_rope": torch.zeros(1, 8, 4)}
        for i in (2, 5, 9)
    ]
    torch.save(entries, stored.cache_path(cache))
    got = capture_qkv(CaptureConfig(model_dir=model, seq_len=8, layers=(9, 2)), cache_dir=cache)
    assert [c.layer for c in got] == [2, 9]
    assert got[1].q.unique().tolist() == [9.0]
    assert CaptureConfig(model_dir=model, seq_len=8, layers=(3,)).covering_cache(cache) is None
    assert CaptureConfig(model_dir=model, seq_len=16, layers=(2,)).covering_cache(cache) is None


def test_missing_model_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="prepare-model"):
        capture_qkv(CaptureConfig(model_dir=tmp_path / "absent", seq_len=64, layers=(0,)), cache_dir=tmp_path)


def test_apply_rope_rotates_pairs_by_position():
    x = torch.tensor([[[1.0, 0.0]]])
    angle = torch.tensor([[0.5, 0.5]])
    out = apply_rope(x, angle.cos(), angle.sin())
    expected = torch.tensor([[[torch.tensor(0.5).cos().item(), torch.tensor(0.5).sin().item()]]])
    torch.testing.assert_close(out, expected)


@pytest.mark.slow
def test_captured_qkv_reproduce_the_models_attention(model_dir: Path, tmp_path: Path):
    """Dense attention over the captured q/k/v equals the model's own attention output (o_proj input)."""
    n = 256
    captures = capture_qkv(CaptureConfig(model_dir=model_dir, seq_len=n, layers=(0, 2)), cache_dir=tmp_path)
    assert [c.layer for c in captures] == [0, 2]
    model, tokenizer = load_model(model_dir, n)
    seen = {}
    model.model.layers[2].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0][0]))
    with torch.no_grad():
        model(input_ids=document_ids(tokenizer, n, 0).unsqueeze(0), use_cache=False)
    expected = seen["x"].view(n, 9, 64).transpose(0, 1)
    c = captures[1]
    assert c.q.shape == (9, n, 64) and c.k.shape == c.v.shape == c.k_pre_rope.shape == (3, n, 64)
    torch.testing.assert_close(dense_attention(c.q, c.k, c.v), expected, atol=1e-5, rtol=1e-4)
    # the cached copy is identical
    again = capture_qkv(CaptureConfig(model_dir=model_dir, seq_len=n, layers=(0, 2)), cache_dir=tmp_path)
    assert torch.equal(again[1].q, c.q)


def test_real_heads_have_structure(captured):
    """On the real 2K capture a sparse streaming pattern keeps far more mass than its density."""
    layer = captured[1]
    index = estimate_a_shape(layer.q, layer.k, AShapeParams(n_init=64, n_local=256))
    recall = attention_recall(layer.q, layer.k, index).mean().item()
    assert recall > 2 * index.density()


def test_stream_layers_hands_out_one_layer_at_a_time(model_dir: Path):
    """Layers arrive in order, each before the next layer runs; the forward stops after the last one."""
    n = 128
    model, tokenizer = load_model(model_dir, n)
    ids = document_ids(tokenizer, n, 0)
    order: list[int] = []
    ran: list[int] = []
    hooks = [model.model.layers[i].register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i in range(5)]

    def on_layer(cap) -> None:
        order.append(cap.layer)
        assert ran[-1] == cap.layer  # handed out before the next layer starts
        assert cap.q.shape == (9, n, 64) and cap.k.shape == cap.k_pre_rope.shape == (3, n, 64)

    try:
        stream_layers(model, ids, (3, 0, 1), on_layer)
    finally:
        for h in hooks:
            h.remove()
    assert order == [0, 1, 3] and max(ran) == 3  # layer 4 never ran
    with pytest.raises(ValueError, match="out of range"):
        stream_layers(model, ids, (99,), on_layer)
