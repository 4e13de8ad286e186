"""The KV connector names each step's requests by the first slot they write, gives the prompts still in
prefill (length, dense ask) and frees finished stores."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from kvcache import vllm_connector as vc
from kvcache.params import FullKvParams
from kvcache.vllm_connector import (
    DENSE_PREFILL_ARG,
    PrefillRequest,
    SparseServeKvConnector,
    StepRequests,
    prefill_at_slot,
    request_at_slot,
)
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

BLOCK = 16
CONFIG = SimpleNamespace(kv_transfer_config=SimpleNamespace(**vc.kv_transfer_config()),
                         cache_config=SimpleNamespace(block_size=BLOCK))


def _new(req_id: str, blocks: list[int], computed: int, prompt: int = 40, dense: bool = False) -> SimpleNamespace:
    params = SimpleNamespace(extra_args={DENSE_PREFILL_ARG: True} if dense else None)
    return SimpleNamespace(req_id=req_id, block_ids=(blocks,), num_computed_tokens=computed,
                           prompt_token_ids=list(range(prompt)), sampling_params=params)


def _step(new=(), cached=(), finished=(), preempted=None) -> SimpleNamespace:
    """A scheduler output: ``cached`` holds ``(req_id, new_blocks | None, computed, resumed)``."""
    return SimpleNamespace(
        scheduled_new_reqs=list(new),
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[c[0] for c in cached],
            new_block_ids=[None if c[1] is None else (c[1],) for c in cached],
            num_computed_tokens=[c[2] for c in cached],
            resumed_req_ids={c[0] for c in cached if c[3]},
        ),
        finished_req_ids=set(finished),
        preempted_req_ids=preempted,
    )


def test_scheduler_side_slots_follow_block_tables() -> None:
    sched = SparseServeKvConnector(CONFIG, KVConnectorRole.SCHEDULER)
    # a 40-token prompt with 20 tokens from the prefix cache, and a fresh one
    meta = sched.build_connector_meta(_step(new=[_new("a", [7, 3, 9], 20), _new("b", [5], 0)]))
    assert meta.slots == {3 * BLOCK + 4: "a", 5 * BLOCK: "b"}
    # decode: a writes position 40 (block 9 of its table), b gets a new block for position 16
    meta = sched.build_connector_meta(_step(cached=[("a", None, 40, False), ("b", [11], 16, False)]))
    assert meta.slots == {9 * BLOCK + 8: "a", 11 * BLOCK: "b"}
    # b was preempted and resumes with a new table; a finished
    meta = sched.build_connector_meta(_step(cached=[("b", [2, 4], 0, True)], finished=["a"], preempted={"c"}))
    assert meta.slots == {2 * BLOCK: "b"} and meta.preempted == {"c"}
    assert "a" not in sched._blocks


def test_worker_side_binds_slots_and_frees_stores() -> None:
    worker = SparseServeKvConnector(CONFIG, KVConnectorRole.WORKER)
    k = torch.randn(2, 5, 8)
    for req in ("r1", "r2", "r3"):
        vc.STORES.create(req, (0, 0), FullKvParams(), 2, 8).prefill(k, k, k)
    published = []
    vc.STEP_END_HOOKS.append(lambda: published.append(len(vc.STORES)))
    try:
        worker.bind_connector_metadata(StepRequests(slots={42: "r1"}, preempted={"r2"}))
        assert request_at_slot(42) == "r1" and request_at_slot(43) is None
        assert "r2" not in vc.STORES and "r1" in vc.STORES
        worker.clear_connector_metadata()
        assert request_at_slot(42) is None
        assert worker.get_finished({"r1", "r3"}) == (None, None)
        assert len(vc.STORES) == 0 and vc.STORES.total_bytes() == 0 and published == [0]
    finally:
        vc.STEP_END_HOOKS.clear()
        vc.STORES.free_all()


def test_slots_are_named_in_every_kv_cache_group() -> None:
    """With windowed layers vLLM's hybrid manager gives a request one block table per group."""
    sched = SparseServeKvConnector(CONFIG, KVConnectorRole.SCHEDULER)
    new = _new("a", [], 20)
    new.block_ids = ([7, 3], [8, 2])
    meta = sched.build_connector_meta(_step(new=[new]))
    assert meta.slots == {3 * BLOCK + 4: "a", 2 * BLOCK + 4: "a"}
    # decode at position 32: both groups get a new block (the windowed group's old blocks may be freed)
    step = _step(cached=[("a", None, 32, False)])
    step.scheduled_cached_reqs.new_block_ids = [([9], [4])]
    assert sched.build_connector_meta(step).slots == {9 * BLOCK: "a", 4 * BLOCK: "a"}
    assert sched.request_finished_all_groups(SimpleNamespace(request_id="a"), ([7, 3, 9], [0, 2, 4])) == (False, None)
    assert "a" not in sched._blocks


def test_prompts_are_given_while_in_prefill_with_the_dense_ask() -> None:
    sched = SparseServeKvConnector(CONFIG, KVConnectorRole.SCHEDULER)
    # a: 40-token prompt, first chunk of 16; b: 20-token prompt asking for dense prefill, whole
    meta = sched.build_connector_meta(_step(new=[_new("a", [7, 3, 9], 0), _new("b", [5, 6], 0, 20, dense=True)]))
    assert meta.prompts == {"a": PrefillRequest(40), "b": PrefillRequest(20, dense=True)}
    # a's last chunk still names its prompt; b decodes (position 20): no longer in prefill
    meta = sched.build_connector_meta(_step(cached=[("a", None, 16, False), ("b", None, 20, False)]))
    assert meta.prompts == {"a": PrefillRequest(40)}
    # a decodes; b was preempted and resumes: its recomputed prefill names the prompt again
    meta = sched.build_connector_meta(_step(cached=[("a", None, 40, False), ("b", [1, 2], 0, True)]))
    assert meta.prompts == {"b": PrefillRequest(20, dense=True)}
    sched.build_connector_meta(_step(finished=["a"]))
    sched.request_finished(SimpleNamespace(request_id="b"), [])
    assert sched._prompts == {} and sched._blocks == {}


def test_worker_publishes_the_step_before_attention_metadata_is_built() -> None:
    """vLLM calls handle_preemptions before it builds the step's attention metadata, bind after."""
    worker = SparseServeKvConnector(CONFIG, KVConnectorRole.WORKER)
    k = torch.randn(2, 5, 8)
    vc.STORES.create("gone", (0, 0), FullKvParams(), 2, 8).prefill(k, k, k)
    step = StepRequests(slots={42: "r1", 99: "r2"}, prompts={"r1": PrefillRequest(300, dense=True)},
                        preempted={"gone"})
    try:
        worker.handle_preemptions(step)
        assert prefill_at_slot(42) == PrefillRequest(300, dense=True)
        assert prefill_at_slot(99) is None and prefill_at_slot(7) is None  # r2 decodes; 7 is no request's
        assert "gone" not in vc.STORES
        worker.bind_connector_metadata(step)  # the same step again: nothing changes
        assert request_at_slot(99) == "r2" and prefill_at_slot(42).prompt_tokens == 300
        worker.clear_connector_metadata()
        assert prefill_at_slot(42) is None and request_at_slot(99) is None
    finally:
        vc.STORES.free_all()
