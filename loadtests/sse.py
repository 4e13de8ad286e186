"""Server-sent events as OpenAI-compatible servers stream them.

Only `data:` lines carry payloads; `[DONE]` ends the stream. Anything else
that is not a comment, an `event:`/`id:`/`retry:` field or a blank line is a
protocol error and raises `MalformedStream`.
"""

from __future__ import annotations

import json
from typing import Any, Final

DONE: Final = "[DONE]"
_IGNORED_FIELDS = ("event:", "id:", "retry:")


class MalformedStream(ValueError):
    """The server sent bytes that are not a valid OpenAI SSE stream."""


def parse_sse_line(line: str) -> dict[str, Any] | str | None:
    """Decode one SSE line.

    Returns the JSON object of a `data:` line, the string `DONE` for the
    terminator, or None for lines that carry no payload (blank, comments,
    other fields). Raises MalformedStream for anything else.
    """
    line = line.rstrip("\r")
    if not line or line.startswith(":") or line.startswith(_IGNORED_FIELDS):
        return None
    if not line.startswith("data:"):
        raise MalformedStream(f"unexpected SSE line: {line[:120]!r}")
    payload = line[len("data:") :].strip()
    if payload == DONE:
        return DONE
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise MalformedStream(f"SSE data is not JSON: {payload[:120]!r}") from exc
    if not isinstance(event, dict):
        raise MalformedStream(f"SSE data is not a JSON object: {payload[:120]!r}")
    return event


def event_text(event: dict[str, Any], endpoint: str) -> str:
    """Generated text carried by one streamed chunk ("" when none).

    `endpoint` is "completions" (choices[0].text) or "chat"
    (choices[0].delta.content). Raises MalformedStream on a wrong shape.
    """
    choices = event.get("choices")
    if not choices:
        return ""
    try:
        choice = choices[0]
        text = choice.get("text") if endpoint == "completions" else choice["delta"].get("content")
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise MalformedStream(f"unexpected chunk shape: {str(event)[:120]}") from exc
    if text is None:
        return ""
    if not isinstance(text, str):
        raise MalformedStream(f"chunk text is not a string: {str(event)[:120]}")
    return text


def event_error(event: dict[str, Any]) -> str | None:
    """The error message of an in-stream error event, if this is one."""
    error = event.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
