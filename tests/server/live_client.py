"""What the live-engine tests of tests/server share: an `openai` client per server, greedy completions,
/metrics samples, and a synthetic document whose records make long prompts of a known size."""

from __future__ import annotations

import re
import time

import httpx
import openai

from loadtests.server_metrics import parse_metrics
from server.sparse_setup import RECALL_PROFILES_DIR, SHIPPED_PROFILE

FULL_THRESHOLD, FULL_CHUNK = 256, 512
"""Sparse/KV threshold and prefill chunk of the exactness servers: small, so ~1K-token prompts cross both."""
ALL_PATTERNS_PROFILE = RECALL_PROFILES_DIR / SHIPPED_PROFILE.name
"""The recall-target profile: heads of every pattern kind (dense, A-shape, block-sparse, vertical-slash,
FlexPrefill), so that its full-budget variant checks the plumbing of each against dense."""


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0, timeout=600)


def complete(server, prompt: str, max_tokens: int = 16) -> tuple[str, int]:
    """Greedy completion: (text, prompt tokens)."""
    out = client(server).completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens,
                                            temperature=0)
    return out.choices[0].text, out.usage.prompt_tokens


def metrics(server) -> dict[str, float]:
    return parse_metrics(httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=10).text)


def counter(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the `sparse_serve:<name>` samples carrying every given label value."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.startswith(f"sparse_serve:{name}{{") and all(w in k for w in want))


def document(lines: int, salt: str = "") -> str:
    """~19 tokens per line; the salt keeps prompts of different tests out of each other's prefix cache."""
    return " ".join(f"Record {salt}{i}: the depot at gate {i % 37} stores {(i * 7919) % 1000} crates."
                    for i in range(lines))


def settled_kv_gauges(server, timeout_s: float = 20) -> dict[str, float]:
    """Metrics once the compressed stores of finished requests are freed (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = metrics(server)
        if counter(samples, "kv_stores") == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def max_concurrency(server) -> float:
    """vLLM's logged pool capacity in requests of max_model_len tokens."""
    found = re.search(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
                      server.log_path.read_text(errors="replace"))
    assert found, server.log_tail()
    return float(found.group(1))
