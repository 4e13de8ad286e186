"""What every task generator receives, and the planted-haystack prompt builder.

A sample is fully determined by (seed, task, length, index): its random
generator is seeded from those, so reruns and the two sides of an A/B
comparison see identical prompts. The token budget follows RULER: prompt
tokens + max_tokens <= length.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from accuracy.sample import Metric, Sample
from loadtests.documents import Insert, fit_prompt
from loadtests.tokenizer import PromptTokenizer


@dataclass(frozen=True)
class SampleContext:
    """Inputs of one sample's generation."""

    task: str
    tokenizer: PromptTokenizer
    length: int
    index: int
    depth: float | None
    seed: int
    endpoint: str = "chat"

    def rng(self) -> random.Random:
        """The sample's own deterministic random generator."""
        return random.Random(f"{self.seed}:{self.task}:{self.length}:{self.index}")

    def prompt_budget(self, max_tokens: int) -> int:
        """Prompt tokens allowed so that the answer still fits in `length`."""
        budget = self.length - max_tokens
        if budget < 64:
            raise ValueError(f"length {self.length} is too short for task {self.task}")
        return budget

    def sample(self, prompt: str, prompt_tokens: int, answers: Sequence[str], metric: Metric, max_tokens: int) -> Sample:
        """Wrap a finished prompt into a Sample."""
        return Sample(
            task=self.task, length=self.length, index=self.index, depth=self.depth, prompt=prompt,
            prompt_tokens=prompt_tokens, max_tokens=max_tokens, answers=list(answers), metric=metric,
        )


def planted_sample(
    ctx: SampleContext,
    inserts: Sequence[Insert],
    intro: str,
    question: str,
    answers: Sequence[str],
    metric: Metric,
    max_tokens: int,
) -> Sample:
    """Filler prose holding `inserts`, between an intro and a closing question."""
    fitted = fit_prompt(
        ctx.tokenizer,
        ctx.prompt_budget(max_tokens),
        ctx.endpoint,
        lambda document: f"{intro}\n\n{document}\n\n{question}",
        inserts,
        seed=ctx.rng().getrandbits(32),
    )
    return ctx.sample(fitted.prompt, fitted.prompt_tokens, answers, metric, max_tokens)


def other_depths(rng: random.Random, count: int) -> list[float]:
    """`count` random depths for distractor or secondary inserts."""
    return [round(rng.uniform(0.0, 1.0), 3) for _ in range(count)]
