"""`sparse-serve serve`: resolve the model, start the engine, run uvicorn on one event loop."""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn

from server.admission import Admission
from server.app import create_app
from server.engine import Engine, served_name
from server.listen import bind_listen_socket
from server.metrics import ServerMetrics
from server.model_prep import ensure_model
from server.sparse_setup import SparseSetupError, arm
from profiles.schema import ProfileError
from server.shutdown import DrainingServer
from server.state import ServerState
from server.settings import ServerSettings

logger = logging.getLogger(__name__)


async def _serve(settings: ServerSettings) -> None:
    t0 = time.perf_counter()
    # first of all (model preparation can take minutes, the engine more): fail fast, hold the port
    listen = bind_listen_socket(settings.host, settings.port)
    model_dir = settings.model or ensure_model(settings.cache_dir)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"sparse-serve: {model_dir} is not a Hugging Face model folder "
                         "(no config.json)")
    try:
        sparse = arm(settings, model_dir)
    except (ProfileError, SparseSetupError) as exc:
        raise SystemExit(f"sparse-serve: {exc}") from None
    metrics = ServerMetrics(served_name(settings, model_dir))
    if sparse is not None:
        metrics.add_sparse_collector(sparse.stats, sparse.pattern_counts, sparse.kv_counts)
    overrides = sparse.engine_overrides() if sparse is not None else None
    engine = Engine.start(settings, model_dir, stat_loggers=[metrics.stat_logger_factory()], overrides=overrides)
    if sparse is not None:
        try:
            sparse.verify_engine()
        except SparseSetupError as exc:
            engine.shutdown()
            raise SystemExit(f"sparse-serve: {exc}") from None
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    state = ServerState(
        engine=engine, metrics=metrics,
        admission=Admission(settings.max_waiting_requests, settings.max_queued_prompt_tokens),
        request_timeout_s=settings.request_timeout_s, max_messages=settings.max_messages)
    app = create_app(state, api_key=api_key, max_body_bytes=settings.max_body_bytes)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, access_log=False,
                            log_level=settings.log_level, timeout_graceful_shutdown=5)
    server = DrainingServer(config, state, settings.shutdown_grace_s)
    logger.info("serving %s on http://%s:%d (ready %.1f s after launch, API key %s)",
                engine.model_id, settings.host, settings.port, time.perf_counter() - t0,
                "required" if api_key else "off")
    try:
        await server.serve(sockets=[listen])
    finally:
        engine.shutdown()
        if sparse is not None:
            sparse.close()


def serve(settings: ServerSettings) -> int:
    asyncio.run(_serve(settings))
    return 0
