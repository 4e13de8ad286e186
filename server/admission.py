"""Admission control: bound the requests (and their prompt tokens) waiting for a first token.

A request is *waiting* from admission until its first output arrives (queued or in prefill). Beyond
either bound a new request gets 429 with ``Retry-After`` at once instead of joining an unbounded queue.
Once it streams, a request no longer counts; the engine's own batch limits govern running requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.errors import APIError

RETRY_AFTER_S = 1


@dataclass
class Ticket:
    """One admitted request's claim on the waiting budget; release it exactly once."""

    admission: "Admission"
    slots: int
    prompt_tokens: int
    waiting: bool = True

    def started(self) -> None:
        """First output arrived: the request stops counting as waiting."""
        if self.waiting:
            self.waiting = False
            self.admission._leave(self)

    def release(self) -> None:
        self.started()


@dataclass
class Admission:
    max_waiting_requests: int
    max_queued_prompt_tokens: int
    waiting_requests: int = 0
    queued_prompt_tokens: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0})

    def admit(self, slots: int, prompt_tokens: int) -> Ticket:
        """Admit a request of `slots` sequences (n) and `prompt_tokens`, or raise a 429."""
        if self.waiting_requests + slots > self.max_waiting_requests:
            self.rejected["requests"] += 1
            raise self._overloaded(f"{self.waiting_requests} requests are already waiting "
                                   f"(limit {self.max_waiting_requests})")
        tokens = prompt_tokens * slots
        if self.queued_prompt_tokens and (
                self.queued_prompt_tokens + tokens > self.max_queued_prompt_tokens):
            self.rejected["tokens"] += 1
            raise self._overloaded(f"{self.queued_prompt_tokens} prompt tokens are already queued "
                                   f"(limit {self.max_queued_prompt_tokens})")
        self.waiting_requests += slots
        self.queued_prompt_tokens += tokens
        return Ticket(self, slots, tokens)

    def _leave(self, ticket: Ticket) -> None:
        self.waiting_requests -= ticket.slots
        self.queued_prompt_tokens -= ticket.prompt_tokens

    @staticmethod
    def _overloaded(why: str) -> APIError:
        return APIError(429, f"Server overloaded: {why}. Retry after {RETRY_AFTER_S} s.",
                        code="server_overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})
