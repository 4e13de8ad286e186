"""Aggregation tasks: common-word and frequent-word extraction (RULER CWE, FWE).

- common_words: a numbered list in which ten words recur many times and the
  rest only three times; name the ten common ones.
- frequent_words: "coded text" whose words follow a Zipf(2) law; name the
  three most frequent ones (counts are exact, so the answer is unambiguous).
The list or text is grown to the token budget by binary search over its size.
Scored with string_match_all.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from accuracy.sample import Sample
from accuracy.tasks.context import SampleContext
from loadtests.filler import distinct_pseudo_words

COMMON = 10
RARE_REPEATS = 3
TOP_FREQUENT = 3
ZIPF_ALPHA = 2.0


def largest_fitting(render: Callable[[int], str], count: Callable[[str], int], budget: int, high: int) -> tuple[int, str, int]:
    """Largest n in [0, high] with count(render(n)) <= budget; returns (n, text, tokens)."""
    low, best = 0, None
    for _ in range(64):
        if low > high:
            break
        middle = (low + high) // 2
        text = render(middle)
        tokens = count(text)
        if tokens <= budget:
            best, low = (middle, text, tokens), middle + 1
        else:
            high = middle - 1
    if best is None:
        raise ValueError(f"even the smallest instance exceeds {budget} tokens")
    return best


def common_words(ctx: SampleContext) -> Sample:
    rng = ctx.rng()
    budget = ctx.prompt_budget(max_tokens := 120)
    repeats = max(4, min(30, budget // 250))
    pool = distinct_pseudo_words(rng, COMMON + budget // 10 + 10)
    common, rare = pool[:COMMON], pool[COMMON:]
    order_seed = rng.getrandbits(32)

    def render(n_rare: int) -> str:
        words = common * repeats + rare[:n_rare] * RARE_REPEATS
        random.Random(order_seed + n_rare).shuffle(words)
        listing = "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1))
        return (
            "Below is a numbered list of words. Some of them appear many times.\n\n"
            f"{listing}\n\nQuestion: What are the {COMMON} most common words in the list above? "
            f"Answer with the {COMMON} words."
        )

    _, prompt, tokens = largest_fitting(render, lambda p: ctx.tokenizer.count_prompt(p, ctx.endpoint), budget, len(rare))
    return ctx.sample(prompt, tokens, common, "all", max_tokens)


def zipf_counts(total: int, vocabulary: int, alpha: float = ZIPF_ALPHA) -> list[int]:
    """Word counts by rank: floor(total * k^-alpha / H), k = 1..vocabulary."""
    weights = [k**-alpha for k in range(1, vocabulary + 1)]
    norm = sum(weights)
    return [int(total * w / norm) for w in weights]


def frequent_words(ctx: SampleContext) -> Sample:
    rng = ctx.rng()
    budget = ctx.prompt_budget(max_tokens := 50)
    vocabulary = distinct_pseudo_words(rng, 300)
    order_seed = rng.getrandbits(32)

    def render(total: int) -> str:
        counts = zipf_counts(total, len(vocabulary))
        words = [w for w, c in zip(vocabulary, counts) for _ in range(c)]
        random.Random(order_seed + total).shuffle(words)
        return (
            "Read the coded text below and keep track of how often each coded word occurs.\n\n"
            f"{' '.join(words)} ...\n\nQuestion: What are the {TOP_FREQUENT} most frequent coded words "
            "in the text above? Answer with the three words."
        )

    total, prompt, tokens = largest_fitting(render, lambda p: ctx.tokenizer.count_prompt(p, ctx.endpoint), budget, budget)
    counts = zipf_counts(total, len(vocabulary))
    if not counts[TOP_FREQUENT - 1] > counts[TOP_FREQUENT] > 0:
        raise ValueError(f"length {ctx.length} is too short for an unambiguous frequent_words sample")
    return ctx.sample(prompt, tokens, vocabulary[:TOP_FREQUENT], "all", max_tokens)
