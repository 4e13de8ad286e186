"""Sparse prefill inside the real engine, through the HTTP API with the `openai` SDK (float32).

The session's live server runs the shipped profile at the default threshold; its outputs below the
threshold must equal plain vLLM's (``--no-sparse``), and it must find a ~7K-token needle as dense does.
A TP=3 server must serve exactly what one process serves with a profile whose heads differ per rank.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attention_backends.head_plan import rank_query_heads
from attention_backends.patterns import AShapeParams
from live_client import ALL_PATTERNS_PROFILE, FULL_CHUNK, FULL_THRESHOLD, client, complete, counter, document, metrics
from profiles.schema import load_profile, save_profile
from profiles.variants import full_budget

pytestmark = pytest.mark.slow

TP = 3  # 9 query / 3 KV heads: the only split of the default model; ranks share the 2 cores


def test_startup_logs_backend_profile_and_head_counts(live_server) -> None:
    log = live_server.log_path.read_text(errors="replace")
    assert ("attention backend: sparse-serve SparseCPUAttentionBackend (wraps CPU_ATTN) on 30 layers, "
            "reading vLLM's 'vec' KV-cache layout") in log  # float32: never the AMX packing
    assert "smollm2-135m-instruct.json" in log and "216 a_shape, 54 block_sparse heads" in log
    heads = counter(metrics(live_server), "sparse_heads")
    assert heads == 30 * 9


def test_below_threshold_outputs_equal_no_sparse(live_server, dense_server) -> None:
    before = metrics(live_server)
    for prompt in ["The capital of France is", document(60), document(150, "b")]:
        ours, n = complete(live_server, prompt)
        assert n < 4096
        assert ours == complete(dense_server, prompt)[0]
    after = metrics(live_server)
    assert counter(after, "sparse_prefill_tokens_total") == counter(before, "sparse_prefill_tokens_total")


def test_needle_found_with_shipped_profile_as_with_dense(live_server, needle) -> None:
    before = metrics(live_server)
    needle.assert_found(live_server)
    after = metrics(live_server)
    assert counter(after, "sparse_prefill_tokens_total") - counter(before, "sparse_prefill_tokens_total") > 4000
    densities = [v for k, v in after.items() if "sparse_layer_density" in k]
    assert densities and min(densities) < 1.0  # some layers run sparse (the profile keeps others fully dense)


def test_sparse_false_prefills_dense_apart_from_sparse_kv(live_server, dense_server) -> None:
    """``extra_body={"sparse": false}``: that request's prefill runs on vLLM's kernel (plain vLLM's
    logprobs), and its KV is cached apart: the sparse prefill of the same prompt just before lends it
    nothing (with a shared prefix cache it would return the sparse logprobs)."""
    ask = dict(prompt=document(260, "dense-ask"), max_tokens=4, temperature=0, logprobs=5)
    ref = client(dense_server).completions.create(model=dense_server.model, **ask)
    n = ref.usage.prompt_tokens
    assert n > 4096  # over the default threshold
    samples = [metrics(live_server)]
    sparse = client(live_server).completions.create(model=live_server.model, **ask)
    samples.append(metrics(live_server))
    dense = client(live_server).completions.create(model=live_server.model, extra_body={"sparse": False}, **ask)
    samples.append(metrics(live_server))
    ran_sparse, ran_dense = ([counter(b, name) - counter(a, name) for a, b in zip(samples, samples[1:])]
                             for name in ("sparse_prefill_tokens_total", "dense_prefill_tokens_total"))
    assert ran_sparse[0] > 0 and ran_sparse[0] + ran_dense[0] == n  # chunks below the threshold run dense
    assert ran_sparse[1] == 0 and ran_dense[1] == n

    def gap(out) -> float:
        """Largest logprob difference from plain vLLM's over the first token's top 5 (inf: other top 5)."""
        want, got = ref.choices[0].logprobs.top_logprobs[0], out.choices[0].logprobs.top_logprobs[0]
        return max(abs(got[t] - want[t]) for t in want) if set(got) == set(want) else math.inf

    assert dense.choices[0].text == ref.choices[0].text
    assert gap(dense) < 1e-5 and gap(sparse) > 1e-3, (gap(dense), gap(sparse))  # measured: 0.0 and 0.04


def test_needle_found_with_recall_target_profile_as_with_dense(launch_server, needle) -> None:
    """The recall-target profile (profiles/recall/, the default until 2026-12-05): most heads dense."""
    with launch_server("--profile", str(ALL_PATTERNS_PROFILE)) as (_, server):
        needle.assert_found(server)
        samples = metrics(server)
    assert counter(samples, "sparse_prefill_tokens_total") > 4000
    assert counter(samples, "sparse_heads", pattern="vertical_slash") == 5


def test_server_refuses_to_start_when_vllm_does_not_load_the_plugin(model_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, VLLM_PLUGINS="lora_filesystem_resolver")
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--model", str(model_dir), "--port", "0",
         "--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 29)],
        env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode != 0
    assert "vLLM did not select the sparse-serve attention backend" in proc.stderr
    assert "--no-sparse" in proc.stderr


@pytest.fixture(scope="module")
def marked_profile(tmp_path_factory) -> Path:
    """Full budget everywhere except the query heads of TP rank 1 of 3: A-shape, 64 sink + 64 local tokens."""
    profile = full_budget(load_profile(ALL_PATTERNS_PROFILE))
    marked = rank_query_heads(profile.model.num_q_heads, TP, 1)
    narrow = AShapeParams(n_init=64, n_local=64)
    layers = [layer.model_copy(update={"heads": [h.model_copy(update={"prefill": narrow}) if h.head in marked else h
                                                 for h in layer.heads]})
              for layer in profile.layers]
    path = tmp_path_factory.mktemp("profile") / "rank1-marked.json"
    save_profile(profile.model_copy(update={"layers": layers}), path)
    return path


def test_tensor_parallel_ranks_apply_their_own_heads(launch_server, marked_profile, dense_server) -> None:
    """TP=3 serves exactly the single-process output of a profile whose heads differ per rank.

    Only rank 1's heads are narrowed, which changes the answer against dense: a rank applying
    another rank's slice (or the whole layer's first heads) would serve different text.
    """
    prompts = [document(n, f"tp{n}-") + " Which gate stores the most crates?" for n in (70, 100)]
    flags = ("--profile", str(marked_profile), "--sparse-threshold", str(FULL_THRESHOLD),
             "--max-num-batched-tokens", str(FULL_CHUNK), "--max-model-len", "4096",
             "--kv-cache-memory-bytes", str(400 << 20))
    outputs = {}
    for tp in (1, TP):
        with launch_server(*flags, "--tensor-parallel-size", str(tp)) as (_, server):
            outputs[tp] = [complete(server, p, max_tokens=24)[0] for p in prompts]
            after = metrics(server)
        assert counter(after, "sparse_prefill_tokens_total") > 2 * FULL_CHUNK
        assert counter(after, "sparse_fallbacks_total", reason="error") == 0
    dense = [complete(dense_server, p, max_tokens=24)[0] for p in prompts]
    assert outputs[1] != dense, "the narrowed heads should change the greedy output"
    assert outputs[TP] == outputs[1]
