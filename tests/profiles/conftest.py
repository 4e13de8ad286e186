"""A tiny seeded random-weight Llama folder (2 layers, 4 q / 2 kv heads) with the default model's tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from profiles.cli import DEFAULT_MODEL_DIR as DEFAULT_MODEL


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (DEFAULT_MODEL / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {DEFAULT_MODEL}")
    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (DEFAULT_MODEL / name).is_file():
            shutil.copy(DEFAULT_MODEL / name, out / name)
    return out
