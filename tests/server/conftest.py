"""Engine fixtures shared by the live tests of tests/server.

Each vLLM server holds ~4 GiB of this 24 GiB host, so a server used by one module is that module's
fixture (stopped at its end) and a server used by one test is started inside it: at most the session's
live server, the dense server and one more run at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from accuracy.tasks.registry import generate_samples
from live_client import client
from loadtests.tokenizer import load_tokenizer
from profiles.schema import load_profile, save_profile
from profiles.variants import exact_kv, full_budget
from server.sparse_setup import SHIPPED_PROFILE


@pytest.fixture(scope="session")
def dense_server(launch_server):
    """Plain vLLM (`--no-sparse`): the reference every sparse output is compared with."""
    with launch_server("--no-sparse") as (_, server):
        yield server


@pytest.fixture(scope="session")
def exact_kv_profile(tmp_path_factory) -> Path:
    """Every head at full prefill budget; even layers ShadowKV at full rank, odd ones NOSA (exact keys
    offloaded), every store at a budget over the context: exact."""
    path = tmp_path_factory.mktemp("profile") / "exact-kv.json"
    save_profile(exact_kv(full_budget(load_profile(SHIPPED_PROFILE)), "shadowkv", "nosa"), path)
    return path


@dataclass(frozen=True)
class Needle:
    messages: list[dict[str, str]]
    max_tokens: int
    answers: list[str]
    metric: str
    dense_reply: str
    prompt_tokens: int


@pytest.fixture(scope="session")
def needle(dense_server) -> Needle:
    """A ~7K-token single-needle retrieval chat and plain vLLM's greedy reply to it (computed once)."""
    tokenizer = load_tokenizer(str(dense_server.model_dir), None)
    sample = generate_samples(tokenizer, ["niah_single"], [7168], 1, seed=3, endpoint="chat",
                              depths=[0.6], progress=False)[0]
    messages = [{"role": "user", "content": sample.prompt}]
    out = client(dense_server).chat.completions.create(model=dense_server.model, messages=messages,
                                                       max_tokens=sample.max_tokens, temperature=0)
    return Needle(messages, sample.max_tokens, list(sample.answers), sample.metric,
                  out.choices[0].message.content, out.usage.prompt_tokens)
