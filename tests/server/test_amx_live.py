"""bfloat16 on a CPU with AMX tiles, where vLLM packs its KV cache for the tiles (ISA ``amx``, not ``vec``).

Every path that reads the paged cache back runs here in that layout: sparse prefill segments,
the windowed layers' histories started from the pool, and the compressed stores built from them.
The stores are exact (full prefill budget, exact ShadowKV / NOSA over the context), so the model must
still find a ~7K-token needle that plain vLLM finds; a misread layout gives it scrambled keys.
Skipped on CPUs without AMX (vLLM never picks that layout there)."""

from __future__ import annotations

import pytest
import torch

from accuracy.scoring import score
from live_client import FULL_CHUNK, FULL_THRESHOLD, client, counter, settled_kv_gauges

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cpu._is_amx_tile_supported(), reason="this CPU has no AMX tiles")]


def test_amx_layout_serves_sparse_prefill_and_windowed_compressed_decode(launch_server, exact_kv_profile,
                                                                          needle) -> None:
    with launch_server("--dtype", "bfloat16", "--profile", str(exact_kv_profile), "--sparse-threshold",
                       str(FULL_THRESHOLD), "--kv-policies", "--kv-threshold", str(FULL_THRESHOLD),
                       "--kv-window-layers", "--max-num-batched-tokens", str(FULL_CHUNK)) as (_, server):
        out = client(server).chat.completions.create(model=server.model, messages=needle.messages,
                                                     max_tokens=needle.max_tokens, temperature=0)
        samples = settled_kv_gauges(server)
        log = server.log_path.read_text(errors="replace")
    assert "reading vLLM's 'amx' KV-cache layout" in log
    assert out.usage.prompt_tokens == needle.prompt_tokens > 6000
    assert score(needle.dense_reply, needle.answers, needle.metric) == 1.0, ("dense misses", needle.dense_reply)
    reply = out.choices[0].message.content
    assert score(reply, needle.answers, needle.metric) == 1.0, (needle.answers, reply, needle.dense_reply)
    assert counter(samples, "sparse_prefill_tokens_total") > 6000
    assert counter(samples, "kv_decode_steps_total") >= 30 and counter(samples, "kv_errors_total") == 0
    assert counter(samples, "sparse_fallbacks_total", reason="no_history") == 0
    assert counter(samples, "kv_stores") == 0
