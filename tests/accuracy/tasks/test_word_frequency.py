"""Aggregation tasks: exact word counts make the answers unambiguous."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from accuracy.tasks.context import SampleContext
from accuracy.tasks.word_frequency import COMMON, common_words, frequent_words, largest_fitting, zipf_counts


def test_zipf_counts() -> None:
    counts = zipf_counts(1000, 50)
    assert counts == sorted(counts, reverse=True)
    assert counts[0] / counts[1] == pytest.approx(4.0, rel=0.02)
    assert sum(counts) <= 1000


def test_largest_fitting_is_the_largest() -> None:
    n, text, tokens = largest_fitting(lambda k: "x" * k, len, 37, 100)
    assert (n, tokens) == (37, 37) and text == "x" * 37


def test_common_words_are_the_most_common(tokenizer) -> None:
    sample = common_words(SampleContext("common_words", tokenizer, 2048, 0, None, seed=1))
    listed = Counter(re.findall(r"^\d+\. (\w+)$", sample.prompt, flags=re.M))
    top = [w for w, _ in listed.most_common(COMMON)]
    assert sorted(top) == sorted(sample.answers)
    assert min(listed[w] for w in sample.answers) > max(c for w, c in listed.items() if w not in sample.answers)


def test_frequent_words_are_the_most_frequent(tokenizer) -> None:
    sample = frequent_words(SampleContext("frequent_words", tokenizer, 2048, 0, None, seed=1))
    text = sample.prompt.split("\n\n")[1]
    ranked = Counter(text.replace(" ...", "").split()).most_common(4)
    assert [w for w, _ in ranked[:3]] == sample.answers
    assert ranked[2][1] > ranked[3][1]
