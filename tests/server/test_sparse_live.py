"""Sparse prefill inside the real engine, through the HTTP API with the `openai` SDK (float32).

Servers: the session's live server (sparse armed: shipped profile, default threshold), a
``--no-sparse`` server (plain vLLM), and a full-budget server (every head's pattern made
exhaustive, threshold 256, 512-token prefill chunks) whose greedy outputs must equal dense
exactly: that proves the paged KV reads, chunk boundaries, GQA and head mapping. A compressed-
decode server (every KV head ShadowKV at full rank and budget, ``--kv-policies``) must equal
dense too: that proves the stores' construction from the paged cache, the per-token extension,
the request naming by the KV connector and the stores' release.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from accuracy.scoring import score
from accuracy.tasks.registry import generate_samples
from loadtests.server_metrics import parse_metrics
from loadtests.tokenizer import load_tokenizer
from attention_backends.head_plan import rank_query_heads
from attention_backends.patterns import AShapeParams
from profiles.schema import KvChoice, load_profile, save_profile
from profiles.variants import exact_kv, full_budget, with_kv
from server.sparse_setup import SHIPPED_PROFILE

pytestmark = pytest.mark.slow

FULL_THRESHOLD, FULL_CHUNK = 256, 512
TP = 3  # 9 query / 3 KV heads: the only split of the default model; ranks share the 2 cores


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0, timeout=600)


def _complete(server, prompt: str, max_tokens: int = 16) -> tuple[str, int]:
    out = _client(server).completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0)
    return out.choices[0].text, out.usage.prompt_tokens


def _metrics(server) -> dict[str, float]:
    return parse_metrics(httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=10).text)


def _counter(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.startswith(f"sparse_serve:{name}{{") and all(w in k for w in want))


def _document(lines: int, salt: str = "") -> str:
    return " ".join(f"Record {salt}{i}: the depot at gate {i % 37} stores {(i * 7919) % 1000} crates."
                    for i in range(lines))


@pytest.fixture(scope="module")
def dense_server(launch_server):
    with launch_server("--no-sparse") as (_, server):
        yield server


@pytest.fixture(scope="module")
def full_budget_server(launch_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "full-budget.json"
    save_profile(full_budget(load_profile(SHIPPED_PROFILE)), path)
    with launch_server("--profile", str(path), "--sparse-threshold", str(FULL_THRESHOLD),
                       "--max-num-batched-tokens", str(FULL_CHUNK)) as (_, server):
        yield server


@pytest.fixture(scope="module")
def exact_kv_server(launch_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "exact-kv.json"
    save_profile(exact_kv(full_budget(load_profile(SHIPPED_PROFILE))), path)
    with launch_server("--profile", str(path), "--sparse-threshold", str(FULL_THRESHOLD), "--kv-policies",
                       "--kv-threshold", str(FULL_THRESHOLD)) as (_, server):
        yield server


@pytest.fixture(scope="module")
def windowed_kv_server(launch_server, tmp_path_factory):
    """Every layer windowed: exact stores, a 256-token sliding window in vLLM's pool, 512-token prefill chunks."""
    path = tmp_path_factory.mktemp("profile") / "exact-kv.json"
    save_profile(exact_kv(full_budget(load_profile(SHIPPED_PROFILE))), path)
    with launch_server("--profile", str(path), "--sparse-threshold", str(FULL_THRESHOLD), "--kv-policies",
                       "--kv-threshold", str(FULL_THRESHOLD), "--kv-window-layers",
                       "--max-num-batched-tokens", str(FULL_CHUNK)) as (_, server):
        yield server


def _max_concurrency(server) -> float:
    """vLLM's logged pool capacity in requests of max_model_len tokens."""
    found = re.search(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
                      server.log_path.read_text(errors="replace"))
    assert found, server.log_tail()
    return float(found.group(1))


def _settled_kv_gauges(server, timeout_s: float = 20) -> dict[str, float]:
    """Metrics once the compressed stores of finished requests are freed (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = _metrics(server)
        if _counter(samples, "kv_stores") == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


@pytest.fixture(scope="module")
def marked_profile(tmp_path_factory) -> Path:
    """Full budget everywhere except the query heads of TP rank 1 of 3: A-shape, 64 sink + 64 local tokens."""
    profile = full_budget(load_profile(SHIPPED_PROFILE))
    marked = rank_query_heads(profile.model.num_q_heads, TP, 1)
    narrow = AShapeParams(n_init=64, n_local=64)
    layers = [layer.model_copy(update={"heads": [h.model_copy(update={"prefill": narrow}) if h.head in marked else h
                                                 for h in layer.heads]})
              for layer in profile.layers]
    path = tmp_path_factory.mktemp("profile") / "rank1-marked.json"
    save_profile(profile.model_copy(update={"layers": layers}), path)
    return path


def test_startup_logs_backend_profile_and_head_counts(live_server) -> None:
    log = live_server.log_path.read_text(errors="replace")
    assert "attention backend: sparse-serve SparseCPUAttentionBackend (wraps CPU_ATTN) on 30 layers" in log
    assert "smollm2-135m-instruct.json" in log and "vertical_slash heads" in log
    heads = _counter(_metrics(live_server), "sparse_heads")
    assert heads == 30 * 9


def test_below_threshold_outputs_equal_no_sparse(live_server, dense_server) -> None:
    before = _metrics(live_server)
    for prompt in ["The capital of France is", _document(60), _document(150, "b")]:
        ours, n = _complete(live_server, prompt)
        assert n < 4096
        assert ours == _complete(dense_server, prompt)[0]
    after = _metrics(live_server)
    assert _counter(after, "sparse_prefill_tokens_total") == _counter(before, "sparse_prefill_tokens_total")


def test_full_budget_chunked_sparse_equals_dense_one_shot(full_budget_server, dense_server) -> None:
    before = _metrics(full_budget_server)
    for lines in (70, 100):  # ~1.3K and ~1.9K tokens: 3 and 4 chunks of 512
        prompt = _document(lines, f"{lines}-")
        ours, n = _complete(full_budget_server, prompt, max_tokens=24)
        assert n > 2 * FULL_CHUNK
        assert ours == _complete(dense_server, prompt, max_tokens=24)[0]
    after = _metrics(full_budget_server)
    sparse = _counter(after, "sparse_prefill_tokens_total") - _counter(before, "sparse_prefill_tokens_total")
    assert sparse >= 2 * (1300 - FULL_CHUNK)
    assert _counter(after, "sparse_fallbacks_total", reason="error") == 0
    densities = {k: v for k, v in after.items() if "sparse_layer_density" in k}
    assert len(densities) == 30 and all(v == pytest.approx(1.0) for v in densities.values())


def test_prefix_cache_hit_still_matches_dense(full_budget_server, dense_server) -> None:
    prefix = _document(100, "shared-")
    _complete(full_budget_server, prefix + " First question: which gate stores the most crates?")
    before = _metrics(full_budget_server)
    prompt = prefix + " Second question: how many crates are at gate 5?"
    ours, n = _complete(full_budget_server, prompt)
    computed = _counter(_metrics(full_budget_server), "sparse_prefill_tokens_total") - _counter(
        before, "sparse_prefill_tokens_total")
    computed += _counter(_metrics(full_budget_server), "dense_prefill_tokens_total") - _counter(
        before, "dense_prefill_tokens_total")
    assert computed < n / 2, "the shared prefix was recomputed instead of read from the prefix cache"
    assert ours == _complete(dense_server, prompt)[0]


def test_concurrent_long_and_short_requests_match_single(full_budget_server) -> None:
    prompts = [_document(60 + 5 * i, f"c{i}-") for i in range(4)] + [f"Count from {i} to {i + 5}:" for i in range(4)]
    single = [_complete(full_budget_server, p)[0] for p in prompts]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: _complete(full_budget_server, p)[0], prompts))
    assert together == single


def test_exact_compressed_decode_equals_dense_and_frees_its_stores(exact_kv_server, dense_server) -> None:
    before = _metrics(exact_kv_server)
    for lines in (40, 70):  # ~0.75K and ~1.3K tokens
        prompt = _document(lines, f"kv{lines}-") + " Which gate stores the most crates?"
        ours, n = _complete(exact_kv_server, prompt, max_tokens=24)
        assert n > FULL_THRESHOLD
        assert ours == _complete(dense_server, prompt, max_tokens=24)[0]
    after = _settled_kv_gauges(exact_kv_server)
    steps = _counter(after, "kv_decode_steps_total") - _counter(before, "kv_decode_steps_total")
    assert steps >= 2 * 23 * 30  # every generated token after the first, in every layer
    assert _counter(after, "kv_positions_read_total") > _counter(before, "kv_positions_read_total")
    assert _counter(after, "kv_offload_read_bytes_total") > 0  # values come from the offload tier
    assert _counter(after, "kv_errors_total") == 0 and _counter(after, "kv_unknown_request_total") == 0
    assert _counter(after, "kv_policy_heads", policy="shadowkv") == 30 * 3
    assert _counter(after, "kv_stores") == 0 and _counter(after, "kv_pool_bytes") == 0
    assert _counter(after, "kv_offload_bytes") == 0


def test_windowed_layers_free_old_pool_blocks_and_still_equal_dense(windowed_kv_server, dense_server) -> None:
    """vLLM keeps 256 tokens of every layer; prefill chunks past the window and decode read the history/stores."""
    log = windowed_kv_server.log_path.read_text(errors="replace")
    assert "30 windowed layers keep a 256-token window in vLLM's pool" in log
    assert _max_concurrency(windowed_kv_server) >= 8 * _max_concurrency(dense_server)
    prompts = [_document(lines, f"win{lines}-") + " Which gate stores the most crates?" for lines in (40, 70)]
    for prompt in prompts:  # ~0.75K and ~1.3K tokens: 2 and 3 prefill chunks, the window left mid-prefill
        ours, n = _complete(windowed_kv_server, prompt, max_tokens=24)
        assert n > FULL_CHUNK
        assert ours == _complete(dense_server, prompt, max_tokens=24)[0]
    short = "Count from 1 to 30:"  # decodes past the window: its store is built from the pool at 256 tokens
    assert _complete(windowed_kv_server, short, max_tokens=260)[0] == _complete(dense_server, short, max_tokens=260)[0]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(lambda p: _complete(windowed_kv_server, p, max_tokens=24)[0], prompts)) == [
            _complete(dense_server, p, max_tokens=24)[0] for p in prompts]
    after = _settled_kv_gauges(windowed_kv_server)
    assert _counter(after, "kv_errors_total") == 0 and _counter(after, "kv_unknown_request_total") == 0
    assert _counter(after, "sparse_fallbacks_total", reason="no_history") == 0
    assert _counter(after, "kv_stores") == 0 and _counter(after, "kv_offload_bytes") == 0


def test_compressed_stores_released_after_abort_concurrency_and_100_requests(exact_kv_server) -> None:
    client = _client(exact_kv_server)
    stream = client.completions.create(model=exact_kv_server.model, prompt=_document(40, "abort-"),
                                       max_tokens=200, temperature=0, stream=True)
    for _, _chunk in zip(range(4), stream):
        pass
    stream.close()  # the server aborts the request mid-decode
    prompts = [_document(30 + 4 * i, f"conc{i}-") for i in range(4)]
    single = [_complete(exact_kv_server, p, max_tokens=8)[0] for p in prompts]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(lambda p: _complete(exact_kv_server, p, max_tokens=8)[0], prompts)) == single
    before = _metrics(exact_kv_server)
    for i in range(100):
        _complete(exact_kv_server, _document(16, f"seq{i}-"), max_tokens=2)  # ~300 tokens, one decode step
    after = _settled_kv_gauges(exact_kv_server)
    assert _counter(after, "kv_decode_steps_total") - _counter(before, "kv_decode_steps_total") >= 100 * 30
    assert _counter(after, "kv_stores") == 0
    assert _counter(after, "kv_pool_bytes") == 0 and _counter(after, "kv_offload_bytes") == 0
    assert _counter(after, "kv_errors_total") == 0


def test_narrow_streaming_kv_changes_the_output(launch_server, dense_server, tmp_path) -> None:
    """Streaming KV with 4 sinks + 16 recent tokens on every head: the stores' output is what the model reads."""
    narrow = KvChoice(policy="streaming", params={"n_sink": 4, "n_local": 16})
    path = tmp_path / "narrow-kv.json"
    save_profile(with_kv(load_profile(SHIPPED_PROFILE), narrow), path)
    prompt = _document(40, "narrow-") + " Which gate stores the most crates?"
    with launch_server("--profile", str(path), "--kv-policies", "--kv-threshold", str(FULL_THRESHOLD)) as (_, server):
        ours, _ = _complete(server, prompt, max_tokens=24)
        samples = _metrics(server)
    assert _counter(samples, "kv_policy_heads", policy="streaming") == 30 * 3
    assert _counter(samples, "kv_decode_steps_total") >= 23 * 30
    assert ours != _complete(dense_server, prompt, max_tokens=24)[0]


def test_needle_found_with_shipped_profile_as_with_dense(live_server, dense_server) -> None:
    tokenizer = load_tokenizer(str(live_server.model_dir), None)
    sample = generate_samples(tokenizer, ["niah_single"], [7168], 1, seed=3, endpoint="chat",
                              depths=[0.6], progress=False)[0]
    before = _metrics(live_server)
    replies = []
    for server in (dense_server, live_server):
        out = _client(server).chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": sample.prompt}],
            max_tokens=sample.max_tokens, temperature=0)
        assert out.usage.prompt_tokens > 6000
        replies.append(out.choices[0].message.content)
    dense, ours = replies
    assert score(dense, sample.answers, sample.metric) == 1.0, ("dense misses this needle", dense)
    assert score(ours, sample.answers, sample.metric) == 1.0, (sample.answers, ours, dense)
    after = _metrics(live_server)
    assert _counter(after, "sparse_prefill_tokens_total") - _counter(before, "sparse_prefill_tokens_total") > 4000
    densities = [v for k, v in after.items() if "sparse_layer_density" in k]
    assert densities and min(densities) < 1.0  # some layers run sparse (the profile keeps others fully dense)


def test_needle_found_with_profile_kv_policies_as_with_dense(launch_server, dense_server) -> None:
    """The shipped profile's measured KV policies at their default budgets (2048 positions), ~7K-token needle.

    (Every KV head ShadowKV at the defaults loses this needle: the profiler keeps such heads `full`.)
    """
    tokenizer = load_tokenizer(str(dense_server.model_dir), None)
    sample = generate_samples(tokenizer, ["niah_single"], [7168], 1, seed=3, endpoint="chat",
                              depths=[0.6], progress=False)[0]
    messages = [{"role": "user", "content": sample.prompt}]
    replies = []
    with launch_server("--kv-policies") as (_, server):
        for s in (dense_server, server):
            out = _client(s).chat.completions.create(model=s.model, messages=messages,
                                                     max_tokens=sample.max_tokens, temperature=0)
            assert out.usage.prompt_tokens > 6000
            replies.append(out.choices[0].message.content)
        samples = _metrics(server)
    dense, ours = replies
    assert score(dense, sample.answers, sample.metric) == 1.0, ("dense misses this needle", dense)
    assert score(ours, sample.answers, sample.metric) == 1.0, (sample.answers, ours, dense)
    compressed = sum(_counter(samples, "kv_policy_heads", policy=p) for p in ("shadowkv", "nosa", "streaming"))
    assert compressed > 0, "the shipped profile compresses no KV head"
    steps = _counter(samples, "kv_decode_steps_total")
    assert steps > 0 and _counter(samples, "kv_errors_total") == 0
    # the budget, not the context, bounds what a step reads (<= 2048 positions per KV head)
    assert _counter(samples, "kv_positions_read_total") <= steps * 3 * 2048


def test_server_refuses_to_start_when_vllm_does_not_load_the_plugin(model_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, VLLM_PLUGINS="lora_filesystem_resolver")
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--model", str(model_dir), "--port", "0",
         "--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 29)],
        env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode != 0
    assert "vLLM did not select the sparse-serve attention backend" in proc.stderr
    assert "--no-sparse" in proc.stderr


def test_tensor_parallel_ranks_apply_their_own_heads(launch_server, marked_profile, dense_server) -> None:
    """TP=3 serves exactly the single-process output of a profile whose heads differ per rank.

    Only rank 1's heads are narrowed, which changes the answer against dense: a rank applying
    another rank's slice (or the whole layer's first heads) would serve different text.
    """
    prompts = [_document(n, f"tp{n}-") + " Which gate stores the most crates?" for n in (70, 100)]
    flags = ("--profile", str(marked_profile), "--sparse-threshold", str(FULL_THRESHOLD),
             "--max-num-batched-tokens", str(FULL_CHUNK), "--max-model-len", "4096",
             "--kv-cache-memory-bytes", str(400 << 20))
    outputs = {}
    for tp in (1, TP):
        with launch_server(*flags, "--tensor-parallel-size", str(tp)) as (_, server):
            outputs[tp] = [_complete(server, p, max_tokens=24)[0] for p in prompts]
            after = _metrics(server)
        assert _counter(after, "sparse_prefill_tokens_total") > 2 * FULL_CHUNK
        assert _counter(after, "sparse_fallbacks_total", reason="error") == 0
    dense = [_complete(dense_server, p, max_tokens=24)[0] for p in prompts]
    assert outputs[1] != dense, "the narrowed heads should change the greedy output"
    assert outputs[TP] == outputs[1]
