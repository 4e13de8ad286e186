"""Offline generator of long structured documents with a key-value retrieval question.

Real attention has structure (sinks, local windows, retrieval of repeated facts) that random
tensors lack. This module writes a deterministic (seeded) report made of titled sections of
templated prose, with "access code" facts scattered through it, some of them repeated, and
ends with a question about one fact, in the spirit of needle-in-a-haystack / passkey tests.
Nothing is downloaded: the vocabulary lives here.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

_NAMES = (
    "Avery Quinn", "Bruno Diaz", "Chiara Rossi", "Dmitri Volkov", "Elena Park", "Farid Haddad", "Greta Lund",
    "Hiro Tanaka", "Ines Duarte", "Jonas Weber", "Kavya Rao", "Liam Byrne", "Mara Okafor", "Nils Berg",
    "Olga Petrova", "Pablo Ruiz", "Qing Li", "Rania Aziz", "Soren Holm", "Tara Singh", "Umar Farouk",
    "Vera Novak", "Wen Zhao", "Ximena Lopez", "Yusuf Demir", "Zofia Nowak",
)
_PLACES = (
    "the harbour office", "the north archive", "the river lab", "the glass tower", "the old mill",
    "the signal station", "the east depot", "the seed vault", "the night market", "the ridge observatory",
)
_TOPICS = (
    "logistics", "maintenance", "budget review", "staff rotation", "equipment audit", "weather log",
    "visitor policy", "energy use", "inventory", "safety drill",
)
_SENTENCES = (
    "During the {topic} meeting, {name} reported that {place} needed {n} new crates of supplies.",
    "{name} walked from {place} to the main gate in {n} minutes, noting the {topic} schedule on the way.",
    "The {topic} committee asked {name} to prepare a summary of the last {n} weeks at {place}.",
    "According to the {topic} notes, {place} received {n} deliveries, all checked by {name}.",
    "{name} suggested moving the {topic} files to {place}, which already stores {n} boxes.",
    "A short delay of {n} hours affected {place}, so {name} rescheduled the {topic} review.",
    "In the afternoon {name} repaired {n} lamps at {place} and logged the work under {topic}.",
)
_FACT = "Important: the access code for {place} is {code}. Remember the access code for {place}."


class SyntheticDocument(BaseModel):
    """A generated document: ``body`` then ``question``; ``answer`` is the asked fact's code."""

    model_config = ConfigDict(frozen=True)

    body: str
    question: str
    answer: str
    facts: dict[str, str]
    seed: int


def _section(rng: random.Random, index: int, sentences: int) -> str:
    topic = rng.choice(_TOPICS)
    lines = [f"Section {index}: {topic.title()}."]
    for _ in range(sentences):
        template = rng.choice(_SENTENCES)
        lines.append(
            template.format(topic=topic, name=rng.choice(_NAMES), place=rng.choice(_PLACES), n=rng.randint(2, 99))
        )
    return " ".join(lines)


def generate_document(
    num_tokens: int,
    count_tokens: Callable[[str], int],
    *,
    seed: int = 0,
    num_facts: int = 6,
    repeats: int = 3,
) -> SyntheticDocument:
    """Build a document of about ``num_tokens`` tokens as measured by ``count_tokens``.

    ``num_facts`` places get an access code; each fact appears ``repeats`` times at random
    section boundaries. The question asks for one of them. ``body + question`` may overshoot
    the target by about one section; callers truncate the body's token ids to fit.
    """
    if num_tokens < 64:
        raise ValueError(f"num_tokens must be at least 64; got {num_tokens}")
    if num_facts < 1 or repeats < 1:
        raise ValueError("num_facts and repeats must be positive")
    rng = random.Random(seed)
    places = rng.sample(_PLACES, min(num_facts, len(_PLACES)))
    facts = {place: f"{rng.randint(100000, 999999)}" for place in places}
    asked = rng.choice(places)
    question = f"\n\nQuestion: What is the access code for {asked}? Answer: The access code for {asked} is"
    fact_tokens = sum(count_tokens(_FACT.format(place=p, code=c)) + 1 for p, c in facts.items()) * repeats
    budget = num_tokens - count_tokens(question) - fact_tokens
    sections: list[str] = [f"Quarterly operations report (document {seed})."]
    used = count_tokens(sections[0])
    max_sections = 100_000
    while used < budget and len(sections) < max_sections:
        sections.append(_section(rng, len(sections), rng.randint(4, 9)))
        used += count_tokens(sections[-1]) + 1
    # facts at random section boundaries, never in the first section
    for place, code in facts.items():
        for _ in range(repeats):
            sections.insert(rng.randint(1, len(sections)), _FACT.format(place=place, code=code))
    return SyntheticDocument(body="\n".join(sections), question=question, answer=facts[asked], facts=facts, seed=seed)
