"""SSE line parsing and chunk decoding."""

from __future__ import annotations

import pytest

from loadtests.sse import DONE, MalformedStream, event_error, event_text, parse_sse_line


def test_parse_lines() -> None:
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert parse_sse_line("data:[DONE]") == DONE
    for quiet in ("", ": keep-alive", "event: message", "id: 4", "\r"):
        assert parse_sse_line(quiet) is None


@pytest.mark.parametrize("line", ["data: {broken", "data: [1, 2]", "hello", "<html>"])
def test_malformed_lines(line: str) -> None:
    with pytest.raises(MalformedStream):
        parse_sse_line(line)


def test_event_text_per_endpoint() -> None:
    assert event_text({"choices": [{"text": "hi"}]}, "completions") == "hi"
    assert event_text({"choices": [{"delta": {"content": "yo"}}]}, "chat") == "yo"
    assert event_text({"choices": [{"delta": {"role": "assistant"}}]}, "chat") == ""
    assert event_text({"choices": [], "usage": {"completion_tokens": 3}}, "chat") == ""
    with pytest.raises(MalformedStream):
        event_text({"choices": [{"text": 5}]}, "completions")
    with pytest.raises(MalformedStream):
        event_text({"choices": ["x"]}, "chat")


def test_event_error() -> None:
    assert event_error({"error": {"message": "too long"}}) == "too long"
    assert event_error({"error": "plain"}) == "plain"
    assert event_error({"choices": []}) is None
