"""Needle-in-a-haystack tasks (RULER's NIAH family).

Secret numbers keyed by made-up words are planted in filler prose:
- single: one needle at the requested depth; recall its number.
- multikey: the needle plus three needles with other keys (distractors).
- multivalue: four numbers for the same key; recall all of them.
- multiquery: four keys; recall the number of each.
The first (target) needle sits at the requested depth, the others at random
depths. Scored with string_match_all.
"""

from __future__ import annotations

import random

from accuracy.sample import Sample
from accuracy.tasks.context import SampleContext, other_depths, planted_sample
from loadtests.documents import Insert
from loadtests.filler import distinct_pseudo_words, random_number

INTRO = (
    "Secret numbers are hidden in the text below. Remember them: "
    "you will be asked about them at the end."
)
EXTRA_NEEDLES = 3


def needle(key: str, value: str) -> str:
    return f"One of the secret numbers for {key} is {value}."


def distinct_numbers(rng: random.Random, count: int) -> list[str]:
    numbers: dict[str, None] = {}
    for _ in range(100 * count):
        if len(numbers) == count:
            return list(numbers)
        numbers[random_number(rng)] = None
    raise ValueError(f"cannot draw {count} distinct numbers")


def _depths(ctx: SampleContext, rng: random.Random, count: int) -> list[float]:
    target = 0.5 if ctx.depth is None else ctx.depth
    return [target, *other_depths(rng, count - 1)]


def niah_single(ctx: SampleContext) -> Sample:
    rng = ctx.rng()
    key, value = distinct_pseudo_words(rng, 1)[0], random_number(rng)
    inserts = [Insert(depth=_depths(ctx, rng, 1)[0], text=needle(key, value))]
    question = f"What is the secret number for {key}? Answer with the number only."
    return planted_sample(ctx, inserts, INTRO, question, [value], "all", 32)


def _keyed_needles(ctx: SampleContext) -> tuple[list[str], list[str], list[Insert]]:
    """Needles with 1 + EXTRA_NEEDLES distinct keys and values; the first is the target."""
    rng = ctx.rng()
    keys = distinct_pseudo_words(rng, 1 + EXTRA_NEEDLES)
    values = distinct_numbers(rng, len(keys))
    depths = _depths(ctx, rng, len(keys))
    return keys, values, [Insert(depth=d, text=needle(k, v)) for k, v, d in zip(keys, values, depths)]


def niah_multikey(ctx: SampleContext) -> Sample:
    keys, values, inserts = _keyed_needles(ctx)
    question = f"What is the secret number for {keys[0]}? Answer with the number only."
    return planted_sample(ctx, inserts, INTRO, question, values[:1], "all", 32)


def niah_multivalue(ctx: SampleContext) -> Sample:
    rng = ctx.rng()
    key = distinct_pseudo_words(rng, 1)[0]
    values = distinct_numbers(rng, 1 + EXTRA_NEEDLES)
    depths = _depths(ctx, rng, len(values))
    inserts = [Insert(depth=d, text=needle(key, v)) for v, d in zip(values, depths)]
    question = f"What are all the secret numbers for {key}? List every one of them."
    return planted_sample(ctx, inserts, INTRO, question, values, "all", 64)


def niah_multiquery(ctx: SampleContext) -> Sample:
    keys, values, inserts = _keyed_needles(ctx)
    asked = ", ".join(keys[:-1]) + f" and {keys[-1]}"
    question = f"What are the secret numbers for {asked}? Give the number for each of them."
    return planted_sample(ctx, inserts, INTRO, question, values, "all", 64)
