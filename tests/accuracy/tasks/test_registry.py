"""Every generator: token length, needle depth, answers present, determinism."""

from __future__ import annotations

import pytest

from accuracy.tasks.fact_qa import CARGOS
from accuracy.tasks.registry import TASKS, generate_samples, parse_numbers, parse_tasks
from loadtests.filler import ADJECTIVES, ADVERBIALS, OBJECTS, SUBJECTS, VERBS

LENGTHS = [2048, 8192]
DEPTHS = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def samples(tokenizer):
    return generate_samples(tokenizer, list(TASKS), LENGTHS, 3, seed=11, endpoint="chat", depths=DEPTHS, progress=False)


def test_grid_and_token_budget(samples, tokenizer) -> None:
    assert len(samples) == len(TASKS) * len(LENGTHS) * 3
    for s in samples:
        assert s.prompt_tokens == tokenizer.count_prompt(s.prompt, "chat")
        assert s.prompt_tokens + s.max_tokens <= s.length, s.task
        tolerance = 32 if s.task in ("common_words", "frequent_words") else 8
        assert s.prompt_tokens + s.max_tokens >= s.length - tolerance, (s.task, s.length, s.prompt_tokens)


def test_answers_are_always_in_the_prompt(samples) -> None:
    for s in samples:
        assert s.answers and all(answer in s.prompt for answer in s.answers), s.task


def test_needles_sit_at_the_requested_depth(samples, tokenizer) -> None:
    checked = 0
    for s in samples:
        if not TASKS[s.task].has_depth:
            assert s.depth is None
            continue
        assert s.depth == DEPTHS[s.index % len(DEPTHS)]
        assert s.prompt.count(s.answers[0]) == 1, (s.task, s.answers[0])  # only in its needle
        document = s.prompt.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]
        # the target needle is the sentence that carries the first answer
        start = document.rindex(".", 0, document.index(s.answers[0])) + 1 if "." in document[: document.index(s.answers[0])] else 0
        measured = tokenizer.count(document[:start]) / tokenizer.count(document)
        assert measured == pytest.approx(s.depth, abs=0.03), (s.task, s.length, s.depth)
        checked += 1
    assert checked == 5 * len(LENGTHS) * 3


def test_cargo_answers_never_occur_in_filler() -> None:
    bank = " ".join(SUBJECTS + VERBS + OBJECTS + ADVERBIALS + ADJECTIVES).lower()
    assert not [cargo for cargo in CARGOS if cargo in bank]


def test_same_seed_same_samples(tokenizer) -> None:
    first = generate_samples(tokenizer, ["niah_multikey", "fact_qa"], [1024], 2, seed=4, progress=False)
    again = generate_samples(tokenizer, ["niah_multikey", "fact_qa"], [1024], 2, seed=4, progress=False)
    other = generate_samples(tokenizer, ["niah_multikey", "fact_qa"], [1024], 2, seed=5, progress=False)
    assert first == again
    assert [s.prompt for s in first] != [s.prompt for s in other]
    assert len({s.prompt for s in first}) == 4


def test_parsing_and_bad_input(tokenizer) -> None:
    assert parse_tasks("all") == list(TASKS)
    assert parse_tasks("fact_qa, niah_single") == ["fact_qa", "niah_single"]
    assert parse_numbers("2048,4096", int, "--lengths") == [2048, 4096]
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("niah_single,ruler")
    with pytest.raises(ValueError, match="--lengths"):
        parse_numbers("2k", int, "--lengths")
    with pytest.raises(ValueError, match="too short"):
        generate_samples(tokenizer, ["common_words"], [100], 1, seed=0, progress=False)
    with pytest.raises(ValueError, match="depths"):
        generate_samples(tokenizer, ["niah_single"], [1024], 1, seed=0, depths=[1.5], progress=False)
