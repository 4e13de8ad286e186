"""Request schemas and their mapping to OpenAI error bodies (no engine)."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from kvcache.vllm_connector import DENSE_PREFILL_ARG, wants_dense_prefill
from server.errors import APIError, validation_error
from server.sampling import resolve_max_tokens, sampling_params
from server.schemas import ChatCompletionRequest, CompletionRequest, Usage


def _error_for(schema, **body) -> APIError:
    with pytest.raises(ValidationError) as info:
        schema(**body)
    return validation_error(RequestValidationError(info.value.errors()))


def test_unknown_field_is_named():
    err = _error_for(CompletionRequest, model="m", prompt="x", logit_bias={"1": 2})
    assert (err.status, err.param, err.code) == (400, "logit_bias", "unsupported_parameter")


def test_range_errors_name_the_field():
    err = _error_for(ChatCompletionRequest, model="m", messages=[{"role": "user", "content": "x"}],
                     temperature=-1)
    assert err.param == "temperature" and err.code == "invalid_value"
    assert _error_for(CompletionRequest, model="m").param == "prompt"


def test_stop_and_prompt_rules():
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", stop=["a"] * 5)
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt=["a", "b"])
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="")
    assert CompletionRequest(model="m", prompt=["only"]).prompt == "only"
    assert CompletionRequest(model="m", prompt=[[1, 2]]).prompt == [1, 2]
    assert CompletionRequest(model="m", prompt="x", stop="END").stop_list() == ["END"]


def test_chat_rules():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                         "text": "b"}]}]
    req = ChatCompletionRequest(model="m", messages=msgs, max_completion_tokens=3)
    assert req.messages[0].text() == "ab" and req.completion_limit() == 3
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=msgs, top_logprobs=2)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=msgs, max_tokens=1, max_completion_tokens=1)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[])
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[{"role": "tool", "content": "x"}])
    image = ChatCompletionRequest(model="m", messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": "http://x"}]}])
    with pytest.raises(ValueError, match="only text"):
        image.messages[0].text()


def test_stream_options_need_stream():
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", stream_options={"include_usage": True})


def test_resolve_max_tokens():
    assert resolve_max_tokens(10, None, 16, 100) == 16
    assert resolve_max_tokens(95, None, 16, 100) == 5
    assert resolve_max_tokens(10, None, None, 100) == 90
    assert resolve_max_tokens(10, 90, None, 100) == 90
    with pytest.raises(APIError) as info:
        resolve_max_tokens(10, 91, None, 100)
    assert info.value.code == "context_length_exceeded"
    assert "100" in info.value.message and "101" in info.value.message
    with pytest.raises(APIError):
        resolve_max_tokens(100, None, 16, 100)


def test_sampling_params_mapping():
    req = CompletionRequest(model="m", prompt="x", temperature=0.5, top_k=-1, stop=["\n"],
                            seed=3, n=2, presence_penalty=0.5, stream=True)
    params = sampling_params(req, 7, 2)
    assert params.max_tokens == 7 and params.temperature == 0.5 and params.n == 2
    assert params.stop == ["\n"] and params.seed == 3 and params.logprobs == 2
    assert params.presence_penalty == 0.5 and params.output_kind.name == "DELTA"
    assert not params.ignore_eos
    assert sampling_params(CompletionRequest(model="m", prompt="x", ignore_eos=True), 1, None).ignore_eos
    assert sampling_params(CompletionRequest(model="m", prompt="x"), 1, None).temperature == 1.0


def test_sparse_false_asks_the_backend_for_dense_prefill():
    plain = sampling_params(CompletionRequest(model="m", prompt="x"), 1, None)
    dense = sampling_params(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                                  sparse=False), 1, None)
    assert not wants_dense_prefill(plain) and wants_dense_prefill(dense)
    assert dense.extra_args == {DENSE_PREFILL_ARG: True}
    with pytest.raises(ValidationError, match="sparse"):
        CompletionRequest(model="m", prompt="x", sparse="maybe")


def test_engine_side_validation_is_a_400():
    greedy_n2 = CompletionRequest(model="m", prompt="x", temperature=0, n=2)
    with pytest.raises(APIError) as info:
        sampling_params(greedy_n2, 4, None)
    assert info.value.status == 400 and "greedy" in info.value.message


def test_usage_of():
    assert Usage.of(3, 4).total_tokens == 7


def test_engine_failures_map_to_status():
    from vllm.v1.engine.exceptions import EngineDeadError

    from server.generation import engine_error

    assert engine_error(EngineDeadError()).status == 503
    err = engine_error(RuntimeError("boom"))
    assert err.status == 500 and "boom" in err.message
    assert err.body().error.type == "server_error"
