"""One evaluation sample: the prompt, its exact answers and how to score it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Metric = Literal["all", "part"]


class Sample(BaseModel):
    """A generated task instance (deterministic from task, length, index, seed)."""

    model_config = ConfigDict(frozen=True)

    task: str
    length: int = Field(description="token budget: prompt tokens + max_tokens <= length")
    index: int
    depth: float | None = Field(default=None, description="needle depth in [0, 1] for needle tasks")
    prompt: str
    prompt_tokens: int
    max_tokens: int
    answers: list[str] = Field(min_length=1)
    metric: Metric = Field(description="all: string_match_all, part: string_match_part")
