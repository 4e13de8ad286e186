"""The vLLM adapter that names each step's requests for the sparse backend: a KV connector.

vLLM's attention backend sees batch rows, never request ids, prompt lengths or sampling
parameters, and nothing tells it when a request ends. Its KV-transfer extension point does all of
that: a connector class, loaded by module path through ``kv_transfer_config``, builds per-step
metadata in the scheduler process and hands it to every worker before the step (vLLM calls
``handle_preemptions`` with it before it builds the step's attention metadata, and binds it again
for the forward pass). Ours carries

* ``slots``: for every scheduled request and KV-cache group, the slot its first new token is
  written to. All groups draw their blocks from one pool and a slot being written belongs to
  exactly one request, so the attention backend of any group maps a batch row to its request
  through the row's ``slot_mapping`` (:func:`request_at_slot`);
* ``prompts``: the prompt length of every request still in prefill, and whether it asked for
  dense prefill (``sparse: false`` in the HTTP body, :data:`DENSE_PREFILL_ARG` in its sampling
  parameters' ``extra_args``) (:func:`prefill_at_slot`);
* ``preempted``: requests whose KV vLLM dropped; their compressed KV stores are freed (a
  recomputed request starts a fresh store).

Finished and aborted requests reach the worker through ``get_finished``; their stores are freed
there. The stores themselves live in this process's :data:`STORES` (one per worker process).
Nothing is transferred: the connector never loads or saves vLLM's paged KV. It supports vLLM's
hybrid KV-cache manager (``SupportsHMA``), which windowed layers (sliding-window KV spec) need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)

from .registry import StoreRegistry

CONNECTOR_NAME = "SparseServeKvConnector"
MODULE_PATH = __name__

STORES = StoreRegistry()
"""KV stores of the live requests of this worker process."""

DENSE_PREFILL_ARG = "sparse_serve_dense_prefill"
"""Key of ``SamplingParams.extra_args`` that asks for this request's prefill to run dense."""

_step_slots: dict[int, str] = {}
_step_prompts: dict[str, PrefillRequest] = {}
_step_meta: StepRequests | None = None

STEP_END_HOOKS: list[Callable[[], None]] = []
"""Called on the worker after every step, once finished requests' stores are freed (gauges)."""


def request_at_slot(slot: int) -> str | None:
    """Request that writes ``slot`` in the current step (``None`` outside a step or for an unknown slot)."""
    return _step_slots.get(slot)


def prefill_at_slot(slot: int) -> PrefillRequest | None:
    """The prompt of the request in prefill that writes ``slot`` this step (``None``: unknown, or not in prefill)."""
    req_id = _step_slots.get(slot)
    return None if req_id is None else _step_prompts.get(req_id)


def wants_dense_prefill(params: Any) -> bool:
    """Whether sampling parameters ``params`` carry the request's ask for dense prefill."""
    return bool((getattr(params, "extra_args", None) or {}).get(DENSE_PREFILL_ARG))


def kv_transfer_config() -> dict[str, Any]:
    """The ``kv_transfer_config`` engine argument that loads this connector."""
    return {"kv_connector": CONNECTOR_NAME, "kv_connector_module_path": MODULE_PATH, "kv_role": "kv_both"}


@dataclass(frozen=True)
class PrefillRequest:
    """A request in prefill: its prompt length (tokens) and whether it asked for dense prefill."""

    prompt_tokens: int
    dense: bool = False


@dataclass
class StepRequests(KVConnectorMetadata):
    """One step's first written slot per request, the prompts still in prefill, and the requests
    preempted since the last step."""

    slots: dict[int, str] = field(default_factory=dict)
    prompts: dict[str, PrefillRequest] = field(default_factory=dict)
    preempted: set[str] = field(default_factory=set)


class SparseServeKvConnector(KVConnectorBase_V1, SupportsHMA):
    """Request identity and lifecycle for the compressed KV stores (no KV transfer)."""

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self._block_size = vllm_config.cache_config.block_size
        # scheduler side: block ids per request and KV-cache group, and each request's prompt
        self._blocks: dict[str, list[list[int]]] = {}
        self._prompts: dict[str, PrefillRequest] = {}

    # ---- scheduler side -------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        return 0, False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        return

    def build_connector_meta(self, scheduler_output: Any) -> StepRequests:
        meta = StepRequests(preempted=set(scheduler_output.preempted_req_ids or ()))
        for req in scheduler_output.scheduled_new_reqs:
            self._blocks[req.req_id] = [list(group) for group in req.block_ids]
            if req.prompt_token_ids is not None:
                self._prompts[req.req_id] = PrefillRequest(len(req.prompt_token_ids),
                                                           wants_dense_prefill(req.sampling_params))
            self._name_slots(meta, req.req_id, req.num_computed_tokens)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            new = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                self._blocks[req_id] = [list(group) for group in new] if new is not None else []
            elif new is not None:
                tables = self._blocks.setdefault(req_id, [])
                tables.extend([] for _ in range(len(new) - len(tables)))
                for table, group in zip(tables, new):
                    table.extend(group)
            self._name_slots(meta, req_id, cached.num_computed_tokens[i])
        for req_id in scheduler_output.finished_req_ids:
            self._forget(req_id)
        return meta

    def _name_slots(self, meta: StepRequests, req_id: str, position: int) -> None:
        """Name ``req_id`` as the writer of ``position``'s slot in every KV-cache group, and give its
        prompt while ``position`` is inside it."""
        prompt = self._prompts.get(req_id)
        if prompt is not None and position < prompt.prompt_tokens:
            meta.prompts[req_id] = prompt
        bs = self._block_size
        for table in self._blocks[req_id]:
            meta.slots[table[position // bs] * bs + position % bs] = req_id

    def _forget(self, req_id: str) -> None:
        self._blocks.pop(req_id, None)
        self._prompts.pop(req_id, None)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._forget(request.request_id)
        return False, None  # nothing in flight: vLLM frees the blocks now

    def request_finished_all_groups(self, request: Any,
                                    block_ids: tuple[list[int], ...]) -> tuple[bool, dict[str, Any] | None]:
        return self.request_finished(request, [])

    # ---- worker side ----------------------------------------------------------------------
    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        _take_step(kv_connector_metadata)  # before vLLM builds the step's attention metadata

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        _take_step(connector_metadata)

    def clear_connector_metadata(self) -> None:
        global _step_meta
        super().clear_connector_metadata()
        _step_slots.clear()
        _step_prompts.clear()
        _step_meta = None

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        for req_id in finished_req_ids:
            STORES.free(req_id)
        for hook in STEP_END_HOOKS:
            hook()
        return None, None

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        return

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return


def _take_step(meta: KVConnectorMetadata) -> None:
    """Make ``meta`` this worker's current step (once per step): free preempted stores, publish slots and prompts."""
    global _step_meta
    assert isinstance(meta, StepRequests)
    if meta is _step_meta:
        return
    _step_meta = meta
    for req_id in meta.preempted:
        STORES.free(req_id)
    _step_slots.clear()
    _step_slots.update(meta.slots)
    _step_prompts.clear()
    _step_prompts.update(meta.prompts)
