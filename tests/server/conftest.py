"""Engine fixtures shared by the live tests of tests/server.

Each vLLM server holds ~4 GiB of this 24 GiB host, so a server used by one module is that module's
fixture (stopped at its end) and a server used by one test is started inside it: at most the session's
live server, the dense server and one more run at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from accuracy.scoring import score
from accuracy.tasks.registry import generate_samples
from live_client import ALL_PATTERNS_PROFILE, client
from loadtests.tokenizer import load_tokenizer
from profiles.schema import load_profile, save_profile
from profiles.variants import exact_kv, full_budget


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
    save_profile(exact_kv(full_budget(load_profile(ALL_PATTERNS_PROFILE)), "shadowkv", "nosa"), path)
    return path


@dataclass(frozen=True)
class Needle:
    messages: list[dict[str, str]]
    max_tokens: int
    answers: list[str]
    metric: str
    dense_reply: str
    prompt_tokens: int

    def ask(self, server) -> tuple[str, int]:
        """``server``'s greedy reply to the needle chat and the prompt tokens it counted."""
        out = client(server).chat.completions.create(model=server.model, messages=self.messages,
                                                     max_tokens=self.max_tokens, temperature=0)
        return out.choices[0].message.content, out.usage.prompt_tokens

    def assert_found(self, server) -> None:
        """``server`` answers the needle right, as plain vLLM does (which must answer it too)."""
        ours, prompt_tokens = self.ask(server)
        assert prompt_tokens == self.prompt_tokens > 6000
        assert score(self.dense_reply, self.answers, self.metric) == 1.0, ("dense misses", self.dense_reply)
        assert score(ours, self.answers, self.metric) == 1.0, (self.answers, ours, self.dense_reply)


@pytest.fixture(scope="session")
def needle(dense_server) -> Needle:
    """A ~7K-token single-needle retrieval chat and plain vLLM's greedy reply to it (computed once)."""
    tokenizer = load_tokenizer(str(dense_server.model_dir), None)
    sample = generate_samples(tokenizer, ["niah_single"], [7168], 1, seed=3, endpoint="chat",
                              depths=[0.6], progress=False)[0]
    messages = [{"role": "user", "content": sample.prompt}]
    unasked = Needle(messages, sample.max_tokens, list(sample.answers), sample.metric, "", 0)
    reply, prompt_tokens = unasked.ask(dense_server)
    return Needle(messages, sample.max_tokens, list(sample.answers), sample.metric, reply, prompt_tokens)
