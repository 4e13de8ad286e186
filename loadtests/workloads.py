"""Offline, deterministic request workloads sized in the target model's tokens.

- random: filler prose with input/output lengths drawn uniformly around a
  mean (`vllm bench serve --dataset-name random` style, but readable text).
- long-doc: one needle fact per document, documents at a mix of lengths
  (`1024:0.7,16384:0.25,65536:0.05`), a question about the needle at the end.
- shared-prefix: many questions over one long document holding many facts,
  so every request shares the document prefix (exercises prefix caching).
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from loadtests.client import RequestSpec
from loadtests.documents import Insert, fit_prompt
from loadtests.filler import distinct_pseudo_words, random_number
from loadtests.tokenizer import PromptTokenizer

WorkloadKind = Literal["random", "long-doc", "shared-prefix"]
_INSTRUCTION = "Read the document below and answer the question that follows it.\n\n"


class WorkloadConfig(BaseModel):
    """Everything that determines a workload's requests."""

    model_config = ConfigDict(frozen=True)

    kind: WorkloadKind = "random"
    num_prompts: int = Field(default=20, ge=1, le=100_000)
    endpoint: Literal["completions", "chat"] = "completions"
    seed: int = 0
    input_len: int = Field(default=1024, ge=16)
    range_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    output_len: int = Field(default=64, ge=1)
    length_mix: tuple[tuple[int, float], ...] = ((1024, 0.7), (4096, 0.25), (7168, 0.05))
    prefix_len: int = Field(default=4096, ge=64)

    @field_validator("length_mix")
    @classmethod
    def _check_mix(cls, mix: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        if not mix:
            raise ValueError("length mix is empty")
        for length, weight in mix:
            if length < 64 or weight <= 0:
                raise ValueError(f"bad length-mix entry {length}:{weight} (need length>=64, weight>0)")
        return mix


def parse_length_mix(text: str) -> tuple[tuple[int, float], ...]:
    """Parse "1024:0.7,16384:0.25" into ((1024, 0.7), (16384, 0.25))."""
    entries = []
    for part in text.split(","):
        length, sep, weight = part.strip().partition(":")
        try:
            entries.append((int(length), float(weight) if sep else 1.0))
        except ValueError as exc:
            raise ValueError(f"bad --length-mix entry {part!r}; expected LENGTH:WEIGHT") from exc
    return tuple(entries)


def allocate(mix: tuple[tuple[int, float], ...], count: int, rng: random.Random) -> list[int]:
    """`count` lengths in the mix's proportions (largest remainder), shuffled."""
    total = sum(weight for _, weight in mix)
    exact = [count * weight / total for _, weight in mix]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(mix)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: count - sum(counts)]:
        counts[i] += 1
    lengths = [length for (length, _), n in zip(mix, counts) for _ in range(n)]
    rng.shuffle(lengths)
    return lengths


def length_bucket(tokens: int) -> str:
    """Power-of-two bucket label for a prompt length (e.g. 1500 -> "2048")."""
    bucket = 1
    while bucket < tokens:
        bucket *= 2
    return str(bucket)


def generate_workload(config: WorkloadConfig, tokenizer: PromptTokenizer) -> list[RequestSpec]:
    """The deterministic request list for `config` (same config, same requests)."""
    rng = random.Random(config.seed)
    if config.kind == "random":
        return _random(config, tokenizer, rng)
    if config.kind == "long-doc":
        return _long_doc(config, tokenizer, rng)
    return _shared_prefix(config, tokenizer, rng)


def _spread(mean: int, ratio: float, rng: random.Random) -> int:
    return rng.randint(max(1, round(mean * (1 - ratio))), max(1, round(mean * (1 + ratio))))


def _random(config: WorkloadConfig, tokenizer: PromptTokenizer, rng: random.Random) -> list[RequestSpec]:
    specs = []
    for index in tqdm(range(config.num_prompts), desc="random workload", leave=False):
        length = _spread(config.input_len, config.range_ratio, rng)
        fitted = fit_prompt(tokenizer, length, config.endpoint, lambda doc: doc, [], rng.getrandbits(32))
        specs.append(
            RequestSpec(
                index=index,
                prompt=fitted.prompt,
                input_tokens=fitted.prompt_tokens,
                max_tokens=_spread(config.output_len, config.range_ratio, rng),
                bucket=length_bucket(length),
            )
        )
    return specs


def _long_doc(config: WorkloadConfig, tokenizer: PromptTokenizer, rng: random.Random) -> list[RequestSpec]:
    specs = []
    lengths = allocate(config.length_mix, config.num_prompts, rng)
    for index, length in enumerate(tqdm(lengths, desc="long-doc workload", leave=False)):
        name, code = distinct_pseudo_words(rng, 1)[0], random_number(rng)
        needle = Insert(depth=rng.uniform(0.05, 0.95), text=f"The access code of the {name} vault is {code}.")
        question = f"What is the access code of the {name} vault? Answer with the number only."
        fitted = fit_prompt(
            tokenizer,
            length,
            config.endpoint,
            lambda doc, q=question: f"{_INSTRUCTION}{doc}\n\nQuestion: {q}\nAnswer:",
            [needle],
            rng.getrandbits(32),
        )
        specs.append(
            RequestSpec(
                index=index,
                prompt=fitted.prompt,
                input_tokens=fitted.prompt_tokens,
                max_tokens=config.output_len,
                bucket=str(length),
            )
        )
    return specs


def _shared_prefix(
    config: WorkloadConfig, tokenizer: PromptTokenizer, rng: random.Random
) -> list[RequestSpec]:
    num_facts = min(config.num_prompts, 64)
    names = distinct_pseudo_words(rng, num_facts)
    codes = [random_number(rng) for _ in names]
    facts = [
        Insert(depth=(k + 0.5) / num_facts, text=f"The access code of the {name} vault is {code}.")
        for k, (name, code) in enumerate(zip(names, codes))
    ]
    fitted = fit_prompt(tokenizer, config.prefix_len, config.endpoint, lambda doc: _INSTRUCTION + doc, facts, rng.getrandbits(32))
    specs = []
    for index in range(config.num_prompts):
        name = names[index % num_facts]
        prompt = f"{fitted.prompt}\n\nQuestion: What is the access code of the {name} vault? Answer with the number only.\nAnswer:"
        specs.append(
            RequestSpec(
                index=index,
                prompt=prompt,
                input_tokens=tokenizer.count_prompt(prompt, config.endpoint),
                max_tokens=config.output_len,
                bucket=str(config.prefix_len),
            )
        )
    return specs
