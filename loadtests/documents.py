"""Long documents of an exact token length with sentences planted at depths.

The needle-in-a-haystack construction used by RULER and by the long-doc and
shared-prefix load workloads: filler prose sized in the target model's
tokens, with "insert" sentences (needles, facts, chain links) placed so that
a fraction `depth` of the filler tokens precedes each of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from loadtests.filler import filler_sentence
from loadtests.tokenizer import PromptTokenizer

SentenceSource = Callable[[random.Random], str]
_TAIL_CANDIDATES = 16  # sentences tried to close the last gap
_MIN_CUT = 4  # smallest gap (tokens) worth closing with a cut sentence


class Insert(BaseModel):
    """A sentence to plant at a relative depth of the document."""

    model_config = ConfigDict(frozen=True)

    depth: float = Field(ge=0.0, le=1.0)
    text: str


class Document(BaseModel):
    """A generated document and where its inserts landed (token offsets)."""

    text: str
    tokens: int
    insert_offsets: list[int] = Field(description="token offset of each insert, input order")


def build_document(
    tokenizer: PromptTokenizer,
    n_tokens: int,
    inserts: Sequence[Insert],
    rng: random.Random,
    sentence: SentenceSource = filler_sentence,
) -> Document:
    """Filler text of at most `n_tokens` tokens (a few less at worst) holding `inserts`.

    Each insert is placed at the sentence boundary where a fraction `depth`
    of the filler tokens lies before it. Raises ValueError when the inserts
    alone do not fit.
    """
    insert_costs = [tokenizer.count(" " + item.text) for item in inserts]
    budget = n_tokens - sum(insert_costs)
    if n_tokens < 1 or budget < 0:
        raise ValueError(f"{len(inserts)} inserts need {sum(insert_costs)} tokens, more than {n_tokens}")
    fillers, costs = _fill(tokenizer, budget, rng, sentence)
    pieces, piece_costs, positions = _interleave(fillers, costs, inserts, insert_costs)
    text = " ".join(pieces)
    tokens = tokenizer.count(text)
    for _ in range(len(pieces)):  # BPE is additive at spaces; this rarely runs
        if tokens <= n_tokens:
            break
        drop = max(i for i in range(len(pieces)) if i not in positions)
        del pieces[drop], piece_costs[drop]
        positions = [p - (p > drop) for p in positions]
        text = " ".join(pieces)
        tokens = tokenizer.count(text)
    offsets = [sum(piece_costs[:p]) for p in positions]
    return Document(text=text, tokens=tokens, insert_offsets=offsets)


def _fill(
    tokenizer: PromptTokenizer, budget: int, rng: random.Random, sentence: SentenceSource
) -> tuple[list[str], list[int]]:
    """Whole sentences up to `budget` tokens; the tail is closed with the best
    fitting of a few extra candidates, and only then with a cut sentence."""
    fillers: list[str] = []
    costs: list[int] = []
    used = 0
    misses = 0
    for _ in range(budget + _TAIL_CANDIDATES):
        if misses == _TAIL_CANDIDATES or used == budget:
            break
        candidate = sentence(rng)
        cost = tokenizer.count(" " + candidate)
        if used + cost > budget:
            misses += 1
            continue
        fillers.append(candidate)
        costs.append(cost)
        used += cost
    words = sentence(rng).rstrip(".").split()
    for end in range(len(words) - 1, 0, -1):
        if budget - used < _MIN_CUT:
            break
        partial = " ".join(words[:end]).rstrip(",") + "."
        partial_cost = tokenizer.count(" " + partial)
        if used + partial_cost <= budget:
            fillers.append(partial)
            costs.append(partial_cost)
            break
    return fillers, costs


def _interleave(
    fillers: list[str], costs: list[int], inserts: Sequence[Insert], insert_costs: list[int]
) -> tuple[list[str], list[int], list[int]]:
    """Merge inserts into the filler list; returns pieces, costs, insert positions."""
    total = sum(costs)
    boundaries: list[int] = []
    for item in inserts:
        wanted = item.depth * total
        prefix, index = 0, 0
        while index < len(costs) and prefix + costs[index] / 2 < wanted:
            prefix += costs[index]
            index += 1
        boundaries.append(index)
    order = sorted(range(len(inserts)), key=lambda i: (boundaries[i], i))
    pieces: list[str] = []
    piece_costs: list[int] = []
    positions = [0] * len(inserts)
    next_insert = 0
    for index in range(len(fillers) + 1):
        while next_insert < len(order) and boundaries[order[next_insert]] == index:
            k = order[next_insert]
            positions[k] = len(pieces)
            pieces.append(inserts[k].text)
            piece_costs.append(insert_costs[k])
            next_insert += 1
        if index < len(fillers):
            pieces.append(fillers[index])
            piece_costs.append(costs[index])
    return pieces, piece_costs, positions


class FittedPrompt(BaseModel):
    """A prompt sized to a token budget, with its embedded document."""

    prompt: str
    prompt_tokens: int
    document: Document


def fit_prompt(
    tokenizer: PromptTokenizer,
    target_tokens: int,
    endpoint: str,
    render: Callable[[str], str],
    inserts: Sequence[Insert],
    seed: int,
    sentence: SentenceSource = filler_sentence,
) -> FittedPrompt:
    """`render(document)` whose prompt token count is at most `target_tokens`.

    The count includes the chat template on the chat endpoint. The result
    lands within a few tokens below the target (bounded retries).
    """
    overhead = tokenizer.count_prompt(render(""), endpoint)
    doc_tokens = target_tokens - overhead
    for _ in range(4):
        document = build_document(tokenizer, doc_tokens, inserts, random.Random(seed), sentence)
        prompt = render(document.text)
        prompt_tokens = tokenizer.count_prompt(prompt, endpoint)
        if prompt_tokens <= target_tokens:
            return FittedPrompt(prompt=prompt, prompt_tokens=prompt_tokens, document=document)
        doc_tokens -= prompt_tokens - target_tokens
    raise ValueError(f"could not fit a prompt into {target_tokens} tokens")
