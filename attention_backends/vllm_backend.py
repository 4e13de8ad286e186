"""The vLLM adapter: a CPU attention backend that runs long prefill segments sparse, per head.

The only module that touches vLLM's attention-backend API. It wraps vLLM's own CPU backend
(``CPUAttentionBackend``; registered over ``CPU_ATTN`` by :mod:`attention_backends.plugin`):
same KV-cache layout and cache-write op, same decode path. Work is split as FlashInfer and
SGLang do it:

* **plan, once per batch** (``SparseCPUMetadataBuilder.build``): which requests are prefill
  segments with a context of at least ``threshold`` tokens (sparse), and a metadata of vLLM's
  kernel for the rest (decode tokens, short prefills), built by the wrapped builder;
* **run, per layer** (``SparseCPUAttentionImpl.forward``): a layer whose heads are all dense in
  the profile runs vLLM's kernel over the whole batch; otherwise vLLM's kernel runs the other
  rows, and every sparse segment runs the layer's head groups (:mod:`attention_backends.segment`)
  over its keys/values read back from the paged cache, its dense heads on vLLM's own kernel
  (:mod:`attention_backends.cpu_kernel`).

Segments too short to plan (fewer than ``min_segment`` new tokens) and segments whose sparse
path raises run dense; both are logged and counted as fallbacks (``engine_stats``). The KV
connector (:mod:`kvcache.vllm_connector`) names each segment's request: a request that asked for
dense prefill runs on vLLM's kernel (counted as dense-prefill tokens), and only the segment that
ends a prompt computes its last ``dense_tail`` rows exactly (earlier chunks' last rows are
document, not the question).

With compressed decode on (``kv_policies``), decode rows of requests whose context reaches
``kv_threshold`` are also planned: after vLLM's kernel, the query heads of the layer's
compressed KV groups (:mod:`kvcache.head_policy`) are recomputed from the request's store
(:mod:`kvcache.decode_step`); the KV connector names the request of each row and frees stores
when requests end. vLLM's kernel still runs every head
(its output for the compressed heads is replaced), so this path saves no time yet.

*Windowed* layers (``--kv-window-layers``: every KV head compressed, a sliding-window KV spec of
``kv_threshold`` tokens in vLLM's pool) are planned in their own KV-cache group: prefill
requests reaching the window become segments computed from the request's exact history, and
decode stores are built from that history (:mod:`attention_backends.windowed`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.distributed.kv_transfer import has_kv_transfer_group
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionType, CommonAttentionMetadata
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)
from vllm.v1.kv_cache_interface import AttentionSpec

from kvcache.decode_step import RopeSpec, advance, attend_all, pre_rope_rows
from kvcache.head_policy import KvGroup, KvPlan
from kvcache.params import low_rank_keys
from kvcache.rope import model_rope
from kvcache.store import SequenceKvStore
from kvcache.vllm_connector import STEP_END_HOOKS, STORES, prefill_at_slot, request_at_slot
from profiles.schema import load_profile

from .batch_plan import BatchPlan, KvRow, Segment, segment_tail
from .cpu_kernel import SegmentKernel, check_cache_layout
from .engine_stats import EngineStats
from .head_plan import HeadPlan
from .paged_kv import gather_sequence_kv
from .patterns import DenseParams
from .plugin_config import PluginConfig
from .segment import SequenceKV, causal_pairs, dense_tail_attention, segment_attention
from .windowed import HistoryMissing, pool_window, windowed_context

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Runtime:
    """Per-process state of the plugin: its config, this rank's head plan, the shared counters."""

    config: PluginConfig
    plan: HeadPlan
    stats: EngineStats | None
    tp_rank: int
    kv_plan: KvPlan | None


@lru_cache(maxsize=1)
def runtime() -> _Runtime:
    config = PluginConfig.from_env()
    if config is None:
        raise RuntimeError("sparse-serve attention backend selected but SPARSE_SERVE_PLUGIN is not set")
    profile = load_profile(config.profile)
    tp_size, tp_rank = get_tensor_model_parallel_world_size(), get_tensor_model_parallel_rank()
    plan = HeadPlan.from_profile(profile, tp_size, tp_rank)
    stats = None
    if config.stats_path is not None and tp_rank == 0:
        stats = EngineStats(config.stats_path, profile.model.num_layers)
    logger.info("sparse prefill: profile %s, threshold %d, rank %d/%d (query heads %s)",
                config.profile, config.threshold, tp_rank, tp_size, plan.global_heads)
    kv_plan = KvPlan.from_profile(profile, plan.global_heads) if config.kv_policies else None
    if kv_plan is not None and stats is not None:
        def publish(stats: EngineStats = stats) -> None:
            stats.set_kv(pool_bytes=STORES.pool_bytes(), offload_bytes=STORES.offload_bytes(), stores=len(STORES))
        STEP_END_HOOKS.append(publish)
    return _Runtime(config=config, plan=plan, stats=stats, tp_rank=tp_rank, kv_plan=kv_plan)


@dataclass
class SparsePrefillMetadata(CPUAttentionMetadata):
    plan: BatchPlan | None = field(default=None)


class SparseCPUMetadataBuilder(CPUAttentionMetadataBuilder):
    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        if self.kv_cache_dtype != "auto":
            raise RuntimeError(f"sparse prefill reads the KV cache back and needs kv_cache_dtype "
                               f"'auto', not {self.kv_cache_dtype!r}; serve with --no-sparse")
        check_cache_layout(self.isa, self.dtype, self.block_size, self.head_dim)
        rt = runtime()
        if rt.stats is not None:
            rt.stats.set_cache_layout(self.isa)
        self._config = rt.config
        self._rope: RopeSpec | None = None
        self._window = 0
        if not has_kv_transfer_group():
            raise RuntimeError("sparse prefill needs the sparse-serve KV connector (kv_transfer_config), which "
                               "names each request's prompt; start the engine through `sparse-serve serve`")
        if rt.kv_plan is not None:
            self._rope = RopeSpec(*model_rope(vllm_config.model_config.hf_config))
            if self.window_size > 0:
                if self.window_size != self._config.kv_threshold:
                    raise RuntimeError(f"windowed layers {layer_names[:3]}... have a {self.window_size}-token "
                                       f"window; sparse-serve needs it equal to kv_threshold "
                                       f"({self._config.kv_threshold})")
                self._window = self.window_size
        # count tokens once per batch: on TP rank 0 of the pipeline stage holding layer 0
        has_first_layer = any(extract_layer_index(name) == 0 for name in layer_names)
        self._stats = rt.stats if has_first_layer else None

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> SparsePrefillMetadata:
        cm = common_attn_metadata
        base = super().build(common_prefix_len, cm, fast_build)
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(CPUAttentionMetadata)}
        if self.is_cross_attention or self.is_encoder_only_attention:
            return SparsePrefillMetadata(**fields)
        qsl = cm.query_start_loc_cpu.tolist()
        seq_lens = cm.seq_lens.cpu().tolist()
        segments: list[Segment] = []
        kv_rows: list[KvRow] = []
        dense_reqs: list[int] = []
        dense_prefill = 0
        slots = cm.slot_mapping.cpu()
        window = self._window
        for i in range(cm.num_reqs):
            q_len, seq_len = qsl[i + 1] - qsl[i], seq_lens[i]
            slot = int(slots[qsl[i]])
            if self._rope is not None and q_len == 1 and seq_len >= self._config.kv_threshold:
                kv_rows.append(KvRow(qsl[i], slot, seq_len, cm.block_table_tensor[i]))
                if window:
                    continue  # the stores compute every head of a windowed layer
            long_context = q_len > 1 and seq_len >= self._config.threshold
            prompt = prefill_at_slot(slot) if q_len > 1 else None
            asked_dense = prompt is not None and prompt.dense
            sparse = long_context and q_len >= self._config.min_segment and not asked_dense
            if long_context and not sparse and not asked_dense and self._stats is not None:
                self._stats.add_fallback("short_segment")
            if q_len > 1 and not sparse:
                dense_prefill += q_len
            if sparse or (window and q_len > 1 and seq_len >= window):
                kernel = None if window else SegmentKernel(self.isa, self.dtype, self.head_dim, q_len, seq_len,
                                                           cm.block_table_tensor[i])
                tail = segment_tail(seq_len, prompt.prompt_tokens if prompt else None, self._config.dense_tail)
                segments.append(Segment(qsl[i], qsl[i + 1], seq_len, cm.block_table_tensor[i], dense=not sparse,
                                        slot=slot, kernel=kernel, tail=tail))
            else:
                dense_reqs.append(i)
        if self._stats is not None:
            self._stats.add_tokens(sum(s.q_end - s.q_start for s in segments if not s.dense), dense_prefill)
        if not segments and not kv_rows:
            return SparsePrefillMetadata(**fields)
        plan = BatchPlan(segments=segments, kv_rows=kv_rows, rope=self._rope, window=window)
        if len(dense_reqs) < cm.num_reqs:
            if dense_reqs:
                plan.dense_rows, sub = self._sub_batch(cm, dense_reqs)
                plan.dense_metadata = super().build(0, sub, fast_build)
            else:
                plan.dense_rows = torch.empty(0, dtype=torch.long)
        return SparsePrefillMetadata(**fields, plan=plan)

    @staticmethod
    def _sub_batch(cm: CommonAttentionMetadata, reqs: list[int]) -> tuple[torch.Tensor, CommonAttentionMetadata]:
        """Rows of ``reqs`` in the batch, and the common metadata of those requests alone."""
        qsl = cm.query_start_loc_cpu
        lens = qsl[1:] - qsl[:-1]
        idx = torch.tensor(reqs, dtype=torch.long)
        rows = torch.cat([torch.arange(int(qsl[i]), int(qsl[i + 1])) for i in reqs])
        sub_qsl = torch.zeros(len(reqs) + 1, dtype=qsl.dtype)
        sub_qsl[1:] = torch.cumsum(lens[idx], 0)
        seq_lens = cm.seq_lens[idx]
        sub = dataclasses.replace(
            cm,
            query_start_loc=sub_qsl.to(cm.query_start_loc.device),
            query_start_loc_cpu=sub_qsl,
            seq_lens=seq_lens,
            num_reqs=len(reqs),
            num_actual_tokens=int(rows.numel()),
            max_query_len=int(lens[idx].max()),
            max_seq_len=int(seq_lens.max()),
            block_table_tensor=cm.block_table_tensor[idx],
            slot_mapping=cm.slot_mapping[rows],
        )
        return rows, sub


class SparseCPUAttentionImpl(CPUAttentionBackendImpl):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._runtime = runtime()
        if self.attn_type == AttentionType.DECODER and self._runtime.stats is not None:
            self._runtime.stats.mark_active()
        self._layer: tuple[int, tuple] | None = None

    def _groups(self, layer: torch.nn.Module) -> tuple[int, tuple]:
        """This layer's index and head groups (resolved and checked on first use)."""
        if self._layer is None:
            index = extract_layer_index(layer.layer_name)
            groups = self._runtime.plan.groups(index)
            heads = sorted(h for g in groups for h in g.heads)
            if heads != list(range(self.num_heads)):
                raise RuntimeError(f"layer {index}: profile gives {len(heads)} query heads on this "
                                   f"rank, the layer has {self.num_heads}")
            self._layer = (index, groups)
        return self._layer

    def _all_dense(self, layer: torch.nn.Module) -> bool:
        """Every head of this layer is dense in the profile."""
        _, groups = self._groups(layer)
        return all(isinstance(g.params, DenseParams) for g in groups)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,  # type: ignore[override]
                output_scale=None, output_block_scale=None):
        plan = getattr(attn_metadata, "plan", None)
        if plan is not None and not plan.window and self._all_dense(layer):
            # every head dense: vLLM's kernel over the whole batch, exactly as without the plugin
            super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                            output_scale, output_block_scale)
            self._count_dense(layer, plan.segments)
            self._compressed_decode(layer, query, key, value, kv_cache, plan, output)
            return output
        if plan is None or plan.dense_rows is None:
            super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                            output_scale, output_block_scale)
        elif plan.dense_rows.numel():
            rows = plan.dense_rows
            dense_out = output.new_empty((rows.numel(), *output.shape[1:]))
            super().forward(layer, query[rows], key[rows], value[rows], kv_cache,
                            plan.dense_metadata, dense_out)
            output[rows] = dense_out
        if plan is None:
            return output
        for seg in plan.segments:
            self._segment(layer, seg, query, key, value, kv_cache, plan.window, output[seg.q_start:seg.q_end])
        self._compressed_decode(layer, query, key, value, kv_cache, plan, output)
        return output

    def _count_dense(self, layer, segments: list[Segment]) -> None:
        """Count the segments of a layer that vLLM's kernel ran: every causal pair kept."""
        if self._runtime.stats is not None:
            layer_idx, _ = self._groups(layer)
            for seg in segments:
                pairs = causal_pairs(seg.seq_len, seg.seq_len - (seg.q_end - seg.q_start)) * self.num_heads
                self._runtime.stats.add_pairs(layer_idx, pairs, pairs)

    def _segment(self, layer, seg: Segment, query, key, value, kv_cache, window: int, output: torch.Tensor) -> None:
        """Write the attention output ``[Nq, Hq, D]`` of one segment: sparse per head group, or dense."""
        layer_idx, groups = self._groups(layer)
        stats = self._runtime.stats
        rows = slice(seg.q_start, seg.q_end)
        if window:
            try:
                k_all, v_all = windowed_context(STORES, request_at_slot(seg.slot), layer_idx, kv_cache, seg.block_ids,
                                                seg.seq_len, key[rows], value[rows], window, layer.isa)
            except HistoryMissing as exc:
                logger.error("layer %d: %s; attending to the %d-token pool window only", layer_idx, exc, window)
                if stats is not None:
                    stats.add_fallback("no_history")
                k_all, v_all = pool_window(kv_cache, seg.block_ids, seg.seq_len, window, layer.isa)
            kv = SequenceKV.of(k_all, v_all)
        else:  # read from the pool only if a group needs the tensors (see segment.SequenceKV)
            kv = SequenceKV(lambda: gather_sequence_kv(kv_cache, seg.block_ids, seg.seq_len, layer.isa),
                            self.num_kv_heads, seg.seq_len)
        q = query[rows].transpose(0, 1)

        def write_dense() -> None:
            output.copy_(dense_tail_attention(q, *kv.get(), scale=self.scale).transpose(0, 1))

        if seg.dense:
            write_dense()
            return
        config = self._runtime.config
        executor = config.executor or ("triton" if query.is_cuda else "gather")
        kernel, q_rows = seg.kernel, query[rows]
        exact = paged = None
        if kernel is not None:
            exact = lambda heads: kernel.heads(q_rows, kv_cache, heads, scale=self.scale)  # noqa: E731
            if config.executor is None:  # column-free indices on vLLM's kernel, the others on `executor`
                paged = lambda heads, index, tail: kernel.sparse(q_rows, kv_cache, heads, index, tail=tail,  # noqa: E731
                                                                 scale=self.scale)
        try:
            _, pairs = segment_attention(q, kv, list(groups), scale=self.scale, backend=executor,
                                         dense_tail=seg.tail, exact=exact, paged=paged,
                                         out=output.transpose(0, 1))
        except Exception:  # noqa: BLE001 - any failure of the sparse path runs dense, counted
            logger.exception("sparse prefill failed on layer %d (%d tokens); running dense", layer_idx, seg.seq_len)
            if stats is not None:
                stats.add_fallback("error")
            write_dense()
        else:
            if stats is not None:
                stats.add_pairs(layer_idx, pairs.kept_pairs, pairs.causal_pairs)

    def _compressed_decode(self, layer, query, key, value, kv_cache, plan: BatchPlan, output) -> None:
        """Replace the compressed heads' output of every planned decode row by its store's attention."""
        rt = self._runtime
        if not plan.kv_rows or rt.kv_plan is None or plan.rope is None:
            return
        layer_idx, _ = self._groups(layer)
        groups = rt.kv_plan.groups(layer_idx)
        stats = rt.stats
        window = plan.window
        if window and sum(len(g.kv_heads) for g in groups) != self.num_kv_heads:
            raise RuntimeError(f"layer {layer_idx} has a sliding-window KV spec but not all its KV heads compressed")
        steps: list[tuple[KvRow, str, KvGroup, SequenceKvStore]] = []  # advanced this step, to attend
        failed: set[int] = set()  # rows whose compressed decode raised: they keep the pool window / vLLM's output

        def fail(row: KvRow, request: str, exc: Exception) -> None:
            logger.error("compressed decode failed on layer %d for request %s; %s", layer_idx, request,
                         "attending to the pool window only" if window else "vLLM's output kept", exc_info=exc)
            STORES.free(request)
            failed.add(row.row)
            if stats is not None:
                stats.add_kv(errors=1)
            if window:
                self._pool_window_row(layer, row, query, kv_cache, window, output)

        k_pre = None  # every row's new pre-RoPE key in one call, where a group keeps low-rank keys
        if any(low_rank_keys(g.params) for g in groups):
            k_pre = pre_rope_rows(key[[row.row for row in plan.kv_rows]], [row.seq_len - 1 for row in plan.kv_rows],
                                  plan.rope)
        for i, row in enumerate(plan.kv_rows):
            request = request_at_slot(row.slot)
            if request is None:
                logger.warning("layer %d: no request writes slot %d; decode row keeps %s", layer_idx, row.slot,
                               "the pool window" if window else "vLLM's output")
                if stats is not None:
                    stats.add_kv(unknown_request=1)
                if window:
                    self._pool_window_row(layer, row, query, kv_cache, window, output)
                continue
            r = slice(row.row, row.row + 1)

            def context(row: KvRow = row, request: str = request, r: slice = r) -> tuple[torch.Tensor, torch.Tensor]:
                if window:
                    return windowed_context(STORES, request, layer_idx, kv_cache, row.block_ids, row.seq_len,
                                            key[r], value[r], window, layer.isa)
                return gather_sequence_kv(kv_cache, row.block_ids, row.seq_len, layer.isa)
            try:
                steps += [(row, request, group, advance(STORES, request, (layer_idx, g), group, key[row.row],
                                                        value[row.row], row.seq_len - 1, context, plan.rope,
                                                        None if k_pre is None else k_pre[i]))
                          for g, group in enumerate(groups)]
            except Exception as exc:  # noqa: BLE001 - the row keeps vLLM's output (the pool window), counted
                fail(row, request, exc)
            if window:
                STORES.drop_history(request, layer_idx)  # the stores hold the sequence now
        results = attend_all([(store, query[row.row, group.q_index]) for row, _, group, store in steps],
                             self.scale, threads=torch.get_num_threads())
        done = native = positions = read = hits = misses = 0  # the layer's counts, added once
        for (row, request, group, _), result in zip(steps, results):
            if row.row in failed:
                continue
            if isinstance(result, Exception):
                fail(row, request, result)
                continue
            out, st = result
            output[row.row, group.q_index] = out  # cast to the output's dtype by the copy
            done, native, positions = done + 1, native + st.native, positions + sum(st.positions)
            read, hits, misses = read + st.offload_bytes_read, hits + st.cache_hits, misses + st.cache_misses
        if stats is not None and done:
            stats.add_kv(decode_steps=done, native_steps=native, positions_read=positions, offload_read_bytes=read,
                         cache_hits=hits, cache_misses=misses)

    def _pool_window_row(self, layer, row: KvRow, query, kv_cache, window: int, output) -> None:
        """A windowed layer's decode row over the keys still in the pool (what vLLM's kernel would give)."""
        k, v = pool_window(kv_cache, row.block_ids, row.seq_len, window, layer.isa)
        q = query[row.row:row.row + 1].transpose(0, 1)
        output[row.row] = dense_tail_attention(q, k, v, scale=self.scale)[:, 0].to(output.dtype)


class SparseCPUAttentionBackend(CPUAttentionBackend):
    """vLLM's CPU attention with sparse long-prefill segments (registered over ``CPU_ATTN``)."""

    @staticmethod
    def get_name() -> str:
        return "CPU_ATTN"  # vLLM looks the layer's backend up by this enum name

    @staticmethod
    def get_impl_cls() -> type[SparseCPUAttentionImpl]:
        return SparseCPUAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[SparseCPUMetadataBuilder]:
        return SparseCPUMetadataBuilder
