"""Graceful shutdown on SIGTERM/SIGINT.

First signal: drain. New requests get 503 and /ready fails (/health stays up); in-flight requests may
finish for `grace_s`; whatever still runs then is aborted with an error event; then uvicorn stops and
the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn

from server.state import ServerState

logger = logging.getLogger(__name__)

_POLL_S = 0.1
_ABORT_WAIT_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, grace_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self._drain: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        logger.info("signal %d: draining (grace %.0f s)", sig, self.grace_s)
        self.state.lifecycle.draining = True
        self._drain = asyncio.get_event_loop().create_task(self._drain_then_exit())

    def _in_flight(self) -> int:
        return self.state.lifecycle.in_flight

    async def _drain_then_exit(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        while self._in_flight() > 0 and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
        if self._in_flight() > 0:
            logger.warning("grace period over: aborting %d in-flight request(s)",
                           self._in_flight())
            self.state.lifecycle.abort_all.set()
            end = loop.time() + _ABORT_WAIT_S
            while self._in_flight() > 0 and loop.time() < end:
                await asyncio.sleep(_POLL_S)
        self.should_exit = True
