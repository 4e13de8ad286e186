"""Calibration inputs of the profiler: retrieval prompts as the server sees them.

MInference searches its per-head patterns on a retrieval prompt, and a profile is only as safe as
its calibration text: heads that look like streaming heads on plain prose may be the ones that
fetch a needle. Each calibration length gets three prompts, generated offline and deterministically
and rendered through the model's own chat template (the served path; raw text when the tokenizer
has none):

* ``kv_report``: the synthetic operations report with repeated access-code facts and a question
  about one of them (key-value retrieval, :mod:`attention_backends.synthetic_doc`);
* ``niah_multikey``: a needle at depth 0 (the first document tokens, where a sink + window head
  cannot see it) among three distractor needles (RULER style, :mod:`accuracy.tasks.needles`);
* ``variable_tracking``: multi-hop variable chains spread through the document.

Each input carries the rows of its closing question: the profiler scores recall both on rows
spread over the later half and on these question rows, so a head whose answer-time attention goes
to the needle is never given a pattern that drops it. Calibration samples use their own seed range
(:data:`SEED_OFFSET`), so they never coincide with `sparse-serve eval` samples of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from accuracy.tasks.context import SampleContext
from accuracy.tasks.needles import niah_multikey
from accuracy.tasks.variable_tracking import variable_tracking
from attention_backends.synthetic_doc import generate_document
from loadtests.tokenizer import PromptTokenizer

TASKS = ("kv_report", "niah_multikey", "variable_tracking")
SEED_OFFSET = 1_000_000
"""Added to the profile seed for calibration samples (eval seeds are small integers)."""

MAX_QUESTION_ROWS = 128
TEMPLATE_TAIL = 8
"""Rows after the question's own tokens counted as question rows (the chat template's closing tokens)."""


@dataclass(frozen=True)
class CalibrationInput:
    """One calibration prompt: ``ids int64 [N]`` and its closing question's rows ``question_rows int64 [R]``."""

    task: str
    ids: torch.Tensor
    question_rows: torch.Tensor


def render(tokenizer: object, text: str) -> list[int]:
    """Token ids of one user message through the chat template (with the assistant prompt), or raw ids."""
    if getattr(tokenizer, "chat_template", None) is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _input(task: str, tokenizer: object, text: str, question: str) -> CalibrationInput:
    ids = render(tokenizer, text)
    tail = len(tokenizer(question, add_special_tokens=False)["input_ids"]) + TEMPLATE_TAIL
    rows = min(tail, MAX_QUESTION_ROWS, len(ids))
    return CalibrationInput(task, torch.tensor(ids, dtype=torch.int64), torch.arange(len(ids) - rows, len(ids)))


def _report(tokenizer: object, prompt: PromptTokenizer, seq_len: int, seed: int) -> CalibrationInput:
    budget = seq_len - prompt.chat_overhead()
    doc = generate_document(budget, prompt.count, seed=seed)
    body = prompt.encode(doc.body)[: max(budget - prompt.count(doc.question) - 1, 0)]
    return _input("kv_report", tokenizer, prompt.decode(body) + doc.question, doc.question)


def _planted(task: str, tokenizer: object, prompt: PromptTokenizer, seq_len: int, seed: int) -> CalibrationInput:
    make = {"niah_multikey": niah_multikey, "variable_tracking": variable_tracking}[task]
    depth = 0.0 if task == "niah_multikey" else None
    ctx = SampleContext(task=task, tokenizer=prompt, length=seq_len, index=0, depth=depth, seed=seed)
    sample = make(ctx)
    question = sample.prompt.rsplit("\n\n", 1)[-1]
    return _input(task, tokenizer, sample.prompt, question)


def calibration_inputs(tokenizer: object, seq_len: int, seed: int) -> list[CalibrationInput]:
    """The calibration prompts at ``seq_len`` tokens (each at most ``seq_len``), one per task of :data:`TASKS`."""
    if seq_len < 256:
        raise ValueError(f"calibration length {seq_len} is too short: need at least 256 tokens")
    prompt = PromptTokenizer(tokenizer, "calibration")
    seed = SEED_OFFSET + seed
    out = [_report(tokenizer, prompt, seq_len, seed)]
    out += [_planted(task, tokenizer, prompt, seq_len, seed) for task in TASKS[1:]]
    for item in out:
        if item.ids.numel() > seq_len:
            raise ValueError(f"calibration prompt {item.task} has {item.ids.numel()} tokens, more than {seq_len}")
    return out
