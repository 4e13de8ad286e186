"""Prometheus metrics of the server (names follow vLLM's ``vllm:*`` ones, prefixed ``sparse_serve:``).

Latency histograms are observed per request at the HTTP layer (what a client sees); running/waiting
gauges and KV usage come from the engine's scheduler through a vLLM stat logger.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerStats

from attention_backends.engine_stats import KV_COUNTERS, EngineStats

P = "sparse_serve:"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
                    160.0, 320.0, 640.0)
_ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)


class ServerMetrics:
    """All instruments, in one registry of their own (so tests can build several apps)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self.ttft = Histogram(f"{P}time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=_LATENCY_BUCKETS, registry=r).labels(model_name)
        self.itl = Histogram(f"{P}inter_token_latency_seconds", "Time between output tokens.",
                             labels, buckets=_ITL_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram(f"{P}e2e_request_latency_seconds", "End-to-end request latency.",
                             labels, buckets=_LATENCY_BUCKETS, registry=r).labels(model_name)
        self.prompt_tokens = Counter(f"{P}prompt_tokens", "Prompt tokens of finished requests.",
                                     labels, registry=r).labels(model_name)
        self.generation_tokens = Counter(f"{P}generation_tokens", "Generated tokens.", labels,
                                         registry=r).labels(model_name)
        self._finished = Counter(f"{P}request_success", "Finished requests by finish reason.",
                                 labels + ["finished_reason"], registry=r)
        self._failed = Counter(f"{P}request_failure", "Requests that ended in an error, by status.",
                               labels + ["status"], registry=r)
        self.running = Gauge(f"{P}num_requests_running", "Requests running in the engine.",
                             labels, registry=r).labels(model_name)
        self.waiting = Gauge(f"{P}num_requests_waiting", "Requests waiting in the engine.",
                             labels, registry=r).labels(model_name)
        self.kv_usage = Gauge(f"{P}kv_cache_usage_perc", "Fraction of the KV pool in use (0-1).",
                              labels, registry=r).labels(model_name)
        self.in_flight = Gauge(f"{P}http_requests_in_flight", "Generation requests being served.",
                               labels, registry=r).labels(model_name)
        self._model = model_name

    def add_sparse_collector(self, stats: EngineStats, pattern_counts: dict[str, int],
                             kv_counts: dict[str, int] | None = None) -> None:
        """Export the sparse backend's counters (written by the engine process) on /metrics.

        ``kv_counts``: KV heads per decode policy when compressed decode is on (else no KV metrics).
        """
        self.registry.register(_SparseCollector(stats, self._model, pattern_counts, kv_counts))

    def finished(self, reason: str) -> None:
        self._finished.labels(self._model, reason).inc()

    def failed(self, status: int) -> None:
        self._failed.labels(self._model, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def stat_logger_factory(self):
        """A vLLM stat-logger factory that feeds the scheduler gauges of this object."""
        metrics = self

        class _SchedulerGauges(StatLoggerBase):
            def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(self, scheduler_stats: SchedulerStats | None,
                       iteration_stats: IterationStats | None, mm_cache_stats=None,
                       engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    metrics.running.set(scheduler_stats.num_running_reqs)
                    metrics.waiting.set(scheduler_stats.num_waiting_reqs
                                        + scheduler_stats.num_skipped_waiting_reqs)
                    metrics.kv_usage.set(scheduler_stats.kv_cache_usage)

            def log_engine_initialized(self) -> None:
                pass

        return _SchedulerGauges


class RequestClock:
    """Timestamps of one request; feeds TTFT / ITL / E2E into `ServerMetrics` as tokens arrive."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.start = time.perf_counter()
        self.last: float | None = None

    def tokens(self, count: int) -> None:
        """Record `count` new output tokens arriving now."""
        if count <= 0:
            return
        t = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(t - self.start)
        else:
            gap = (t - self.last) / count
            for _ in range(count):
                self.metrics.itl.observe(gap)
        self.last = t

    def done(self, prompt_tokens: int, generated: int, reasons: list[str]) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.start)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(generated)
        for reason in reasons:
            self.metrics.finished(reason)


class _SparseCollector(Collector):
    """Sparse-prefill counters read from the engine's shared stats file at scrape time."""

    def __init__(self, stats: EngineStats, model_name: str, pattern_counts: dict[str, int],
                 kv_counts: dict[str, int] | None) -> None:
        self.stats, self.model, self.patterns, self.kv_counts = stats, model_name, pattern_counts, kv_counts

    def collect(self):
        labels = ["model_name"]
        sparse = CounterMetricFamily(f"{P}sparse_prefill_tokens", "Prefill tokens run with sparse "
                                     "attention patterns.", labels=labels)
        sparse.add_metric([self.model], self.stats.sparse_tokens)
        dense = CounterMetricFamily(f"{P}dense_prefill_tokens", "Prefill tokens run dense (context "
                                    "below the sparse threshold, a request's `sparse: false`, or a fallback).",
                                    labels=labels)
        dense.add_metric([self.model], self.stats.dense_tokens)
        fallbacks = CounterMetricFamily(f"{P}sparse_fallbacks", "Sparse-eligible prefill segments "
                                        "that ran dense, by reason.", labels=labels + ["reason"])
        for reason, count in self.stats.fallbacks().items():
            fallbacks.add_metric([self.model, reason], count)
        density = GaugeMetricFamily(f"{P}sparse_layer_density", "Mean fraction of causal pairs "
                                    "computed by sparse prefill, per layer.", labels=labels + ["layer"])
        for layer, value in self.stats.layer_density().items():
            density.add_metric([self.model, str(layer)], value)
        heads = GaugeMetricFamily(f"{P}sparse_heads", "(layer, head) pairs per prefill pattern in "
                                  "the active profile.", labels=labels + ["pattern"])
        for pattern, count in self.patterns.items():
            heads.add_metric([self.model, pattern], count)
        yield from (sparse, dense, fallbacks, density, heads)
        if self.kv_counts is not None:
            yield from self._kv_metrics(labels)

    def _kv_metrics(self, labels: list[str]):
        policies = GaugeMetricFamily(f"{P}kv_policy_heads", "KV heads (all layers) per decode-time KV "
                                     "policy in the active profile.", labels=labels + ["policy"])
        for policy, count in (self.kv_counts or {}).items():
            policies.add_metric([self.model, policy], count)
        yield policies
        kv = self.stats.kv()
        for name, help_text in KV_HELP.items():
            family = CounterMetricFamily if name in KV_COUNTERS else GaugeMetricFamily
            metric = family(f"{P}kv_{name}", help_text, labels=labels)
            metric.add_metric([self.model], kv[name])
            yield metric


KV_HELP = {
    "decode_steps": "Decode steps (row x layer x KV group) run through compressed KV stores.",
    "native_steps": "Of those, steps run by the C kernel (kvcache/csrc); the others ran the PyTorch path "
                    "(no C compiler, a CUDA device, or a dtype / head_dim the kernel does not cover; logged once).",
    "positions_read": "KV positions read by compressed decode steps (summed over KV heads).",
    "offload_read_bytes": "Bytes copied from the offload tier by compressed decode: values, and keys where offloaded (NOSA: misses only).",
    "cache_hits": "NOSA resident-cache chunk hits.",
    "cache_misses": "NOSA resident-cache chunk misses (copied from the offload tier).",
    "unknown_request": "Decode rows the KV connector did not name (they used exact KV; logged).",
    "errors": "Compressed decode steps that raised (they used exact KV; logged).",
    "pool_bytes": "Bytes held on the pool tier by the compressed stores of live requests (TP rank 0).",
    "offload_bytes": "Bytes held on the offload (host) tier by the stores of live requests (TP rank 0).",
    "stores": "Requests holding compressed KV stores (TP rank 0).",
}
