"""The HTTP API end to end: the official `openai` SDK (sync, async, streaming) and raw httpx for errors,
against the one live server of the session (real vLLM engine, default model, float32)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

pytestmark = pytest.mark.slow

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.api_key,
                         max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(live_server):
    return AutoTokenizer.from_pretrained(live_server.model_dir)


def _metric(text: str, name: str) -> float:
    """Sum of all samples of `name` (any labels) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_models_lists_served_model(client, live_server):
    ids = [m.id for m in client.models.list().data]
    assert ids == [live_server.model]


def test_greedy_chat_answers_paris_and_is_deterministic(client, live_server):
    replies = [client.chat.completions.create(model=live_server.model, messages=CAPITAL,
                                              temperature=0, max_tokens=24)
               for _ in range(2)]
    assert "Paris" in replies[0].choices[0].message.content
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    assert replies[0].choices[0].finish_reason == "stop"


def test_usage_matches_tokenizer(client, live_server, tokenizer):
    prompt = "The quick brown fox jumps over the lazy dog."
    out = client.completions.create(model=live_server.model, prompt=prompt, max_tokens=7,
                                    temperature=0)
    expected_prompt = len(tokenizer.encode(prompt, add_special_tokens=False))
    assert out.usage.prompt_tokens == expected_prompt
    assert out.usage.completion_tokens == 7
    assert out.usage.total_tokens == expected_prompt + 7
    assert out.choices[0].finish_reason == "length"

    chat = client.chat.completions.create(model=live_server.model, messages=CAPITAL,
                                          temperature=0, max_completion_tokens=5)
    rendered = tokenizer.apply_chat_template(CAPITAL, add_generation_prompt=True, tokenize=False)
    assert chat.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert chat.usage.completion_tokens == 5


def test_stop_sequence_is_honoured(client, live_server):
    free = client.completions.create(model=live_server.model, prompt="Count: 1, 2, 3, 4,",
                                     max_tokens=12, temperature=0).choices[0].text
    assert " 6" in free, free  # the model counts on; the stop below must cut it
    stopped = client.completions.create(model=live_server.model, prompt="Count: 1, 2, 3, 4,",
                                        max_tokens=12, temperature=0, stop=[" 6"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == free[: free.index(" 6")]


def test_ignore_eos_generates_max_tokens(client, live_server):
    ended = client.chat.completions.create(model=live_server.model, messages=CAPITAL, max_tokens=200,
                                           temperature=0)
    assert ended.choices[0].finish_reason == "stop", "the model must end on its own for this test"
    n = ended.usage.completion_tokens + 5
    forced = client.chat.completions.create(model=live_server.model, messages=CAPITAL, max_tokens=n,
                                            temperature=0, extra_body={"ignore_eos": True})
    assert forced.choices[0].finish_reason == "length" and forced.usage.completion_tokens == n
    assert forced.choices[0].message.content.startswith(ended.choices[0].message.content)


def test_n_returns_two_choices(client, live_server):
    out = client.chat.completions.create(model=live_server.model, messages=CAPITAL, n=2,
                                         temperature=0.8, seed=1, max_tokens=8)
    assert sorted(c.index for c in out.choices) == [0, 1]
    assert all(c.message.content for c in out.choices)
    assert 2 <= out.usage.completion_tokens <= 16  # both choices counted, 8 tokens at most each


def test_seeded_sampling_is_reproducible(client, live_server):
    kwargs = dict(model=live_server.model, prompt="Once upon a time", max_tokens=12,
                  temperature=1.0, top_p=0.9, seed=1234, extra_body={"top_k": 40})
    assert (client.completions.create(**kwargs).choices[0].text
            == client.completions.create(**kwargs).choices[0].text)


def test_logprobs(client, live_server):
    out = client.completions.create(model=live_server.model, prompt="The capital of France is",
                                    max_tokens=3, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 3 and len(lp.top_logprobs) == 3
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    chat = client.chat.completions.create(model=live_server.model, messages=CAPITAL, max_tokens=3,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)


def test_streaming_chat_has_usage_chunk_and_done(client, live_server):
    stream = client.chat.completions.create(model=live_server.model, messages=CAPITAL,
                                            temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    nonstream = client.chat.completions.create(model=live_server.model, messages=CAPITAL,
                                               temperature=0, max_tokens=24)
    assert text == nonstream.choices[0].message.content


def test_raw_sse_ends_with_done(live_server):
    body = {"model": live_server.model, "prompt": "Hello", "max_tokens": 4, "stream": True,
            "temperature": 0}
    r = httpx.post(f"{live_server.url}/v1/completions", json=body, headers=live_server.headers,
                   timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert '"object":"text_completion"' in events[0]


def test_async_client_concurrent_requests(live_server):
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.api_key,
                                    max_retries=0, timeout=120)
        outs = await asyncio.gather(*[
            client.completions.create(model=live_server.model, prompt=f"{i} + {i} =",
                                      max_tokens=6, temperature=0) for i in range(4)])
        return [o.choices[0].text for o in outs]

    texts = asyncio.run(run())
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)


# ---- errors --------------------------------------------------------------------------------------


def _post(server, path: str, *, json=None, content=None, headers=None) -> httpx.Response:
    hdrs = dict(server.headers)
    hdrs.update(headers or {})
    return httpx.post(f"{server.url}{path}", json=json, content=content, headers=hdrs, timeout=60)


def _assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "temperature": 5}, "temperature"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, None),
    ({"prompt": "x", "temperature": 0, "n": 2}, None),  # rejected by vLLM's own validation
    ({}, "prompt"),
])
def test_invalid_parameters_are_400(live_server, body, param):
    err = _assert_error(_post(live_server, "/v1/completions",
                              json={"model": live_server.model, **body}), 400)
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


def test_malformed_json_is_400(live_server):
    _assert_error(_post(live_server, "/v1/chat/completions", content=b"{not json",
                        headers={"content-type": "application/json"}), 400, "invalid_json")
    _assert_error(_post(live_server, "/v1/chat/completions", json=[1, 2]), 400)


def test_context_length_exceeded_names_both_numbers(live_server):
    r = _post(live_server, "/v1/completions",
              json={"model": live_server.model, "prompt": "hello world", "max_tokens": 9000})
    err = _assert_error(r, 400, "context_length_exceeded")
    assert "8192" in err["message"] and "9000" in err["message"]
    long_prompt = "word " * 9000
    err = _assert_error(_post(live_server, "/v1/chat/completions", json={
        "model": live_server.model, "messages": [{"role": "user", "content": long_prompt}]}),
        400, "context_length_exceeded")
    assert "8192" in err["message"] and re.search(r"\d{4,}", err["message"])


def test_unknown_model_is_404(live_server):
    err = _assert_error(_post(live_server, "/v1/completions",
                              json={"model": "gpt-17", "prompt": "x"}), 404, "model_not_found")
    assert err["param"] == "model"


def test_auth_required_on_v1_only(live_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        r = httpx.get(f"{live_server.url}/v1/models", headers=headers, timeout=10)
        _assert_error(r, 401, "invalid_api_key")
    assert httpx.get(f"{live_server.url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{live_server.url}/metrics", timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="nope",
                      max_retries=0).models.list()


def test_metrics_count_ttft_of_requests(client, live_server):
    before = httpx.get(f"{live_server.url}/metrics", timeout=10).text
    for _ in range(3):
        client.completions.create(model=live_server.model, prompt="Hi", max_tokens=2)
    after = httpx.get(f"{live_server.url}/metrics", timeout=10).text
    name = "sparse_serve:time_to_first_token_seconds_count"
    assert _metric(after, name) - _metric(before, name) == 3
    assert _metric(after, "sparse_serve:prompt_tokens_total") > _metric(
        before, "sparse_serve:prompt_tokens_total")
    for family in ("sparse_serve:inter_token_latency_seconds_bucket",
                   "sparse_serve:e2e_request_latency_seconds_bucket",
                   "sparse_serve:generation_tokens_total",
                   "sparse_serve:num_requests_running", "sparse_serve:num_requests_waiting"):
        assert family in after


def _seconds_until_zero(server, name: str, timeout_s: float = 10.0) -> float:
    """Seconds until gauge `name` reads 0 (inf if it does not within `timeout_s`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if _metric(httpx.get(f"{server.url}/metrics", timeout=10).text, name) == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    return float("inf")


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_engine_request(live_server, stream):
    body = {"model": live_server.model, "prompt": "Once upon a time, in a land far away,",
            "max_tokens": 2000, "temperature": 0, "stream": stream}
    with httpx.Client(timeout=60) as http:
        if stream:
            with http.stream("POST", f"{live_server.url}/v1/completions", json=body,
                             headers=live_server.headers) as r:
                next(r.iter_lines())  # first event: the request is running in the engine
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post(f"{live_server.url}/v1/completions", json=body,
                          headers=live_server.headers, timeout=3)
    # The engine's scheduler gauge: the abort reached the engine and freed the request, within 1 s.
    elapsed = _seconds_until_zero(live_server, "sparse_serve:num_requests_running")
    print(f"engine running gauge back to 0 {elapsed:.2f} s after the disconnect")
    assert elapsed <= 1.0
    assert _seconds_until_zero(live_server, "sparse_serve:http_requests_in_flight") <= 1.0
