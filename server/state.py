"""What the routes share: the engine, metrics, admission control and the server's lifecycle."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.admission import Admission
from server.engine import Engine
from server.metrics import ServerMetrics


@dataclass
class Lifecycle:
    """Draining after SIGTERM: refuse new work, then abort what is still running."""

    draining: bool = False
    in_flight: int = 0  # generation requests between admission and their last byte
    abort_all: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class ServerState:
    engine: Engine
    metrics: ServerMetrics
    admission: Admission
    request_timeout_s: float
    max_messages: int
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
