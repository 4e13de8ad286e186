"""Deterministic workloads: lengths, mixes, shared prefixes."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import ValidationError

from loadtests.workloads import WorkloadConfig, allocate, generate_workload, length_bucket, parse_length_mix


def test_parse_length_mix() -> None:
    assert parse_length_mix("1024:0.7, 16384:0.25,65536:0.05") == ((1024, 0.7), (16384, 0.25), (65536, 0.05))
    assert parse_length_mix("2048") == ((2048, 1.0),)
    with pytest.raises(ValueError, match="length-mix"):
        parse_length_mix("1k:0.5")
    with pytest.raises(ValidationError):
        WorkloadConfig(length_mix=((1024, 0.0),))


def test_allocate_is_proportional_and_seeded() -> None:
    mix = ((1024, 0.7), (4096, 0.25), (16384, 0.05))
    lengths = allocate(mix, 20, random.Random(0))
    assert Counter(lengths) == {1024: 14, 4096: 5, 16384: 1}
    assert lengths == allocate(mix, 20, random.Random(0))
    assert sum(Counter(allocate(mix, 7, random.Random(1))).values()) == 7


def test_length_bucket() -> None:
    assert [length_bucket(n) for n in (1, 1000, 1024, 1025)] == ["1", "1024", "1024", "2048"]


def test_random_workload(smollm_tokenizer) -> None:
    config = WorkloadConfig(kind="random", num_prompts=6, input_len=400, range_ratio=0.5, output_len=20, seed=3)
    specs = generate_workload(config, smollm_tokenizer)
    assert [s.index for s in specs] == list(range(6))
    for spec in specs:
        assert 200 - 8 <= spec.input_tokens <= 600
        assert spec.input_tokens == smollm_tokenizer.count_prompt(spec.prompt, "completions")
        assert 10 <= spec.max_tokens <= 30
    assert len({s.input_tokens for s in specs}) > 1
    assert specs == generate_workload(config, smollm_tokenizer)


def test_long_doc_workload(smollm_tokenizer) -> None:
    config = WorkloadConfig(kind="long-doc", num_prompts=5, length_mix=((256, 0.6), (1024, 0.4)), endpoint="chat")
    specs = generate_workload(config, smollm_tokenizer)
    assert Counter(s.bucket for s in specs) == {"256": 3, "1024": 2}
    for spec in specs:
        assert int(spec.bucket) - 8 <= spec.input_tokens <= int(spec.bucket)
        name = spec.prompt.split("What is the access code of the ")[1].split(" vault")[0]
        assert f"The access code of the {name} vault is " in spec.prompt


def test_shared_prefix_workload(smollm_tokenizer) -> None:
    config = WorkloadConfig(kind="shared-prefix", num_prompts=4, prefix_len=512)
    specs = generate_workload(config, smollm_tokenizer)
    document = specs[0].prompt.split("\n\nQuestion:")[0]
    assert all(s.prompt.startswith(document) for s in specs)
    assert len({s.prompt for s in specs}) == 4
    assert 512 - 8 <= smollm_tokenizer.count_prompt(document, "completions") <= 512
