"""Only the segment that ends a prompt computes its last rows exactly (the prompt's question)."""

from __future__ import annotations

from attention_backends.batch_plan import segment_tail


def test_tail_only_on_the_segment_that_ends_its_prompt() -> None:
    # a 20,000-token prompt in chunks of 8,192: the first two chunks end inside the document
    assert [segment_tail(n, 20_000, 64) for n in (8_192, 16_384, 20_000)] == [0, 0, 64]
    # a recomputed (preempted) request: its prefill runs past the prompt into generated tokens
    assert segment_tail(20_005, 20_000, 64) == 64
    # prompt unknown (no connector entry): the safe side
    assert segment_tail(8_192, None, 64) == 64
    assert segment_tail(20_000, 20_000, 0) == 0
