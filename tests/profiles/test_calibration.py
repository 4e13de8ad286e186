"""Calibration prompts: chat-templated, within the length, question rows at the end, a needle at the start."""

from __future__ import annotations

import pytest
import torch

from profiles.calibration import SEED_OFFSET, TASKS, calibration_inputs, render
from profiles.cli import DEFAULT_MODEL_DIR as DEFAULT_MODEL


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    if not (DEFAULT_MODEL / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {DEFAULT_MODEL}")
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL)


@pytest.mark.parametrize("length", [512, 2048])
def test_inputs_fit_the_length_and_end_with_their_question(tokenizer, length: int) -> None:
    inputs = calibration_inputs(tokenizer, length, seed=0)
    assert [i.task for i in inputs] == list(TASKS)
    for item in inputs:
        n = item.ids.numel()
        assert length - 64 <= n <= length
        assert item.question_rows[-1] == n - 1 and torch.equal(item.question_rows, torch.arange(n - item.question_rows.numel(), n))
        tail = tokenizer.decode(item.ids[item.question_rows].tolist())
        assert "?" in tail and tail.rstrip().endswith("assistant")  # the question, then the chat template's turn
        assert tokenizer.decode(item.ids[:8].tolist()).startswith("<|im_start|>")


def test_inputs_are_deterministic_and_seeded(tokenizer) -> None:
    a = calibration_inputs(tokenizer, 512, seed=0)
    b = calibration_inputs(tokenizer, 512, seed=0)
    c = calibration_inputs(tokenizer, 512, seed=1)
    assert all(torch.equal(x.ids, y.ids) for x, y in zip(a, b))
    assert not any(torch.equal(x.ids, y.ids) for x, y in zip(a, c))
    assert SEED_OFFSET > 10_000  # never an eval seed in practice


def test_the_needle_sits_at_the_start_of_the_document(tokenizer) -> None:
    needles = calibration_inputs(tokenizer, 2048, seed=0)[1]
    text = tokenizer.decode(needles.ids.tolist())
    first = text.index("One of the secret numbers for")
    question = text.rsplit("secret number for ", 1)[1].split("?")[0]
    assert f"secret numbers for {question} is" in text[first : first + 120]  # the asked needle comes first
    assert first < len(text) * 0.1


def test_render_without_a_chat_template_is_raw_text(tokenizer) -> None:
    class Raw:
        chat_template = None

        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            return tokenizer(text, add_special_tokens=add_special_tokens)

    assert render(Raw(), "hello world") == tokenizer("hello world", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="too short"):
        calibration_inputs(tokenizer, 100, seed=0)
