"""Documents sized in model tokens, with inserts at the requested depths."""

from __future__ import annotations

import random

import pytest

from loadtests.documents import Insert, build_document, fit_prompt


@pytest.mark.parametrize("n_tokens", [300, 2048, 8192])
def test_document_length_and_depths(smollm_tokenizer, n_tokens: int) -> None:
    inserts = [Insert(depth=d, text=f"The marker number {i} is {1000 + i}.") for i, d in enumerate([0.0, 0.3, 0.5, 1.0])]
    doc = build_document(smollm_tokenizer, n_tokens, inserts, random.Random(1))
    actual = smollm_tokenizer.count(doc.text)
    assert doc.tokens == actual
    assert n_tokens - 8 <= actual <= n_tokens
    for insert, offset in zip(inserts, doc.insert_offsets):
        start = doc.text.index(insert.text)
        measured = smollm_tokenizer.count(doc.text[:start])
        assert abs(measured - offset) <= 2
        assert abs(measured / actual - insert.depth) < 0.03 + 30 / n_tokens


def test_same_seed_same_text(smollm_tokenizer) -> None:
    a = build_document(smollm_tokenizer, 500, [], random.Random(5))
    b = build_document(smollm_tokenizer, 500, [], random.Random(5))
    c = build_document(smollm_tokenizer, 500, [], random.Random(6))
    assert a.text == b.text and a.text != c.text


def test_inserts_that_do_not_fit(smollm_tokenizer) -> None:
    with pytest.raises(ValueError, match="inserts need"):
        build_document(smollm_tokenizer, 10, [Insert(depth=0.5, text="word " * 50)], random.Random(0))


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_fit_prompt_counts_the_template(smollm_tokenizer, endpoint: str) -> None:
    fitted = fit_prompt(smollm_tokenizer, 1024, endpoint, lambda d: f"Read this.\n\n{d}\n\nQ: ok?", [], seed=2)
    assert fitted.prompt.startswith("Read this.") and fitted.prompt.endswith("Q: ok?")
    assert fitted.prompt_tokens == smollm_tokenizer.count_prompt(fitted.prompt, endpoint)
    assert 1024 - 8 <= fitted.prompt_tokens <= 1024
