"""vLLM plugin entry point (``vllm.general_plugins``): select the sparse-prefill backend.

vLLM calls :func:`register` once in every process it starts (API server, engine core,
workers, Ray workers). When the server has exported a :class:`PluginConfig`, the CPU platform's
``CPU_ATTN`` backend is overridden through vLLM's supported registry hook
(``register_backend``) with our wrapper of it; otherwise nothing changes. The CPU platform
ignores ``--attention-backend`` and always resolves ``CPU_ATTN``, so the override is what
selects us; the server then checks that the engine really built our layers
(``EngineStats.active_layers``) and refuses to start if not.
"""

from __future__ import annotations

import logging

from .plugin_config import PluginConfig

logger = logging.getLogger(__name__)

BACKEND_PATH = "attention_backends.vllm_backend.SparseCPUAttentionBackend"


def register() -> None:
    if PluginConfig.from_env() is None:
        return
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CPU_ATTN, BACKEND_PATH)
    logger.debug("sparse-serve: CPU_ATTN -> %s", BACKEND_PATH)
