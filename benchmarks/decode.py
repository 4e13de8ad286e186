"""Long-context decode, dense KV vs compressed KV, through the real server (not a test).

Starts ``sparse-serve serve`` twice from this process with the same settings and profile (so the
prefill, sparse per the profile, is the same): ``dense`` decodes with vLLM's exact KV, ``ours``
adds ``--kv-policies`` (per-head ShadowKV / NOSA / streaming stores from the profile,
:mod:`kvcache`). For every context length one synthetic document is prefilled once (prefix
caching on; every later request shares its blocks and adds a short distinct suffix), then
``batch`` concurrent streams generate ``--tokens`` tokens each with ``ignore_eos``. With
``--kv-window-layers`` ours also gives the layers whose KV heads are all compressed a sliding
window of ``--kv-threshold`` tokens in vLLM's pool; prefix caching is then off, so every stream
prefills its own copy of the document.

Rows, per context and batch:

* ``dense_tok_s`` / ``ours_tok_s``: generated tokens per second of all streams together, in the
  steady window (from the moment every stream has its 3rd token, so that store builds are not
  counted, to the first stream's end);
* ``pool_bytes_per_token_dense``: vLLM's KV pool bytes per token (all layers, K and V);
  ``pool_bytes_per_token_ours``: what vLLM's pool still holds per token (whole blocks; a windowed
  layer keeps its window's blocks, :func:`pool_bytes_per_request`) plus the stores' pool tier
  (peak ``kv_pool_bytes`` over ``batch x context`` tokens);
* ``compressed_head_pool_ratio``: exact KV bytes of one KV head per token over the stores' pool
  bytes per token and compressed KV head (the per-head saving the stores achieve);
* ``max_concurrent_dense`` / ``max_concurrent_ours``: requests of this context, decoding, that
  fit in a fixed pool (``--concurrency-pool-bytes``, default ``--kv-cache-memory-bytes``): its
  bytes over the bytes one request holds there (ours: vLLM's blocks plus its stores' pool tier,
  both measured, so the engine's own pool may be smaller where the host's memory is short);
* ``offload_bytes_per_token``: bytes read from the offload tier per generated token;
* ``host_read_gbs_dense`` / ``host_read_gbs_ours``: the host's memory-read speed just before and
  just after that mode's batch (:mod:`benchmarks.host_probe`): where the two modes' figures differ,
  the host moved between them and the speedup carries that drift.

    python benchmarks/decode.py --contexts 8192,16384,32768 --batch 1,8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.host_probe import host_read_gbs  # noqa: E402
from benchmarks.kv_shape import KvShape  # noqa: E402
from benchmarks.ttft import PROFILE_SETS, add_profile_set_args, prompt_of, shipped_profile_for  # noqa: E402
from profiles.schema import KvChoice, load_profile, save_profile  # noqa: E402
from profiles.variants import with_kv  # noqa: E402
from kvcache.params import parse_kv_params  # noqa: E402
from server.cpu_host import cpu_flags, cpu_model, resolve_dtype  # noqa: E402
from server.model_prep import ensure_model  # noqa: E402
from server.rope_variant import yarn_variant  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402

BLOCK_SIZE = 16  # vLLM's CPU KV block (tokens)
STEADY_FROM = 3  # tokens per stream before the steady window opens
_METRIC = re.compile(r"^sparse_serve:(kv_[a-z_]+?)(?:_total)?\{[^}]*\} ([0-9.e+-]+)$", re.M)
_WINDOWED = re.compile(r"(\d+) windowed layers keep a (\d+)-token window")


def kv_metrics(url: str) -> dict[str, float]:
    """The server's ``sparse_serve:kv_*`` values (policy head counts keyed ``kv_policy_heads:<policy>``)."""
    return parse_kv_metrics(httpx.get(f"{url}/metrics", timeout=30).text)


def parse_kv_metrics(text: str) -> dict[str, float]:
    """``sparse_serve:kv_*`` samples of a Prometheus text page (counters without ``_total``)."""
    values = {name: float(v) for name, v in _METRIC.findall(text)
              if name not in ("kv_cache_usage_perc", "kv_policy_heads")}
    for policy, v in re.findall(r'^sparse_serve:kv_policy_heads\{[^}]*policy="(\w+)"\} ([0-9.e+-]+)$', text, re.M):
        values[f"kv_policy_heads:{policy}"] = float(v)
    return values


@dataclass
class PeakSampler:
    """Polls /metrics while a batch runs and keeps the peak of the stores' gauges."""

    url: str
    peaks: dict[str, float] = field(default_factory=lambda: {"kv_pool_bytes": 0.0, "kv_offload_bytes": 0.0})
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                now = kv_metrics(self.url)
            except httpx.HTTPError:
                continue
            for name in self.peaks:
                self.peaks[name] = max(self.peaks[name], now.get(name, 0.0))

    def __enter__(self) -> "PeakSampler":
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def stream_times(client: openai.OpenAI, model: str, prompt: list[int], tokens: int) -> list[float]:
    """Arrival time (perf_counter) of every generated token of one greedy stream of exactly ``tokens``."""
    times: list[float] = []
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
    return times


def steady_rate(per_stream: list[list[float]]) -> float:
    """Tokens per second of all streams in the window where all of them are past their first tokens."""
    start = max(t[STEADY_FROM - 1] for t in per_stream)
    end = min(t[-1] for t in per_stream)
    count = sum(sum(1 for x in t if start < x <= end) for t in per_stream)
    return count / (end - start) if end > start and count else float("nan")


def client_of(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=3600)


def run_batch(server, prompts: list[list[int]], tokens: int) -> tuple[float, dict[str, float], dict[str, float]]:
    """Steady tokens/s of ``prompts`` decoded concurrently, the kv counter deltas and the gauges' peaks."""
    client = client_of(server)
    before = kv_metrics(server.url)
    results: list[list[float]] = [[] for _ in prompts]

    def one(i: int) -> None:
        results[i] = stream_times(client, server.model, prompts[i], tokens)

    with PeakSampler(server.url) as sampler:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if any(len(t) < STEADY_FROM + 1 for t in results):
        raise RuntimeError(f"a stream returned too few tokens: {[len(t) for t in results]}")
    after = kv_metrics(server.url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if not k.startswith("kv_policy_heads")}
    return steady_rate(results), delta, sampler.peaks


def windowed_layers(log_path: Path) -> tuple[int, int]:
    """Windowed layers and their window (tokens) from the server's start-up log; ``(0, 0)`` if none."""
    found = _WINDOWED.findall(log_path.read_text(errors="replace"))
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)


def pool_bytes_per_request(context: int, layers: int, windowed: int, window: int, layer_token_bytes: int) -> int:
    """Bytes of vLLM's pool one decoding request of ``context`` tokens holds (whole blocks).

    A windowed layer keeps the blocks from the one holding ``position - window + 1`` on: at most
    ``ceil(window / block) + 1`` blocks.
    """
    full = math.ceil(context / BLOCK_SIZE)
    held = min(full, math.ceil(window / BLOCK_SIZE) + 1) if windowed else full
    return ((layers - windowed) * full + windowed * held) * BLOCK_SIZE * layer_token_bytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="8192,16384,32768", help="comma-separated context lengths (tokens)")
    ap.add_argument("--batch", default="1,8", help="comma-separated numbers of concurrent streams")
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per stream")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--dtype", default="auto", help="server --dtype (auto: float32 on CPUs without native bf16)")
    ap.add_argument("--kv", default="profile", choices=["profile", "shadowkv", "nosa", "streaming"],
                    help="KV policies of ours: the profile's measured ones, or one policy (defaults) on every head")
    ap.add_argument("--kv-params", type=json.loads, default={},
                    help='with --kv POLICY: JSON of that policy\'s parameters, e.g. \'{"offload_keys": true}\' for nosa')
    ap.add_argument("--kv-cache-memory-bytes", type=int, default=5 << 30, help="vLLM's KV pool size (both modes)")
    ap.add_argument("--concurrency-pool-bytes", type=int, default=None,
                    help="the fixed pool that max_concurrent_* divide (default: --kv-cache-memory-bytes); lets a "
                    "host too small for a large engine pool still report against one")
    ap.add_argument("--kv-window-layers", action="store_true",
                    help="ours: sliding-window KV spec for the layers whose KV heads are all compressed")
    ap.add_argument("--kv-threshold", type=int, default=4096, help="ours: --kv-threshold (and window)")
    ap.add_argument("--modes", default="dense,ours")
    add_profile_set_args(ap)  # both modes prefill with that profile; with --kv profile ours takes its KV policies
    ap.add_argument("--server-args", default="",
                    help="more `sparse-serve serve` flags for both modes, e.g. '--no-enforce-eager' (torch.compile)")
    args = ap.parse_args(argv)
    contexts = [int(x) for x in args.contexts.split(",")]
    batches = [int(x) for x in args.batch.split(",")]
    max_len = max(contexts)
    model = yarn_variant(ensure_model(), max_len)
    tokenizer = AutoTokenizer.from_pretrained(model)
    work = Path(tempfile.mkdtemp(prefix="decode-"))
    profile_path = shipped_profile_for(model, work / "profile.json", PROFILE_SETS[args.profile_set])
    if args.kv != "profile":
        parse_kv_params({"policy": args.kv, **args.kv_params})  # a wrong name or value fails here, not in the server
        choice = KvChoice(policy=args.kv, params={k: float(v) for k, v in args.kv_params.items()})
        save_profile(with_kv(load_profile(profile_path), choice), work / "kv.json")
        profile_path = work / "kv.json"
    # every request: the shared document, a distinct short suffix, then `tokens` generated, within the context
    suffixes = [tokenizer.encode(f" #{i}", add_special_tokens=False) for i in range(max(batches))]
    room = args.tokens + max(len(s) for s in suffixes) + 1
    docs = {n: prompt_of(tokenizer, n - room, seed=n)[0] for n in contexts}
    shape = KvShape.of(model)
    dtype = resolve_dtype(args.dtype, cuda=False, flags=cpu_flags())
    head_token_bytes, layer_token_bytes = shape.head_token_bytes(dtype), shape.layer_token_bytes(dtype)
    common = ["--dtype", args.dtype, "--max-model-len", str(max_len), "--max-num-batched-tokens", "8192",
              "--kv-cache-memory-bytes", str(args.kv_cache_memory_bytes), "--profile", str(profile_path),
              "--max-queued-prompt-tokens", str(max(batches) * max_len),
              "--request-timeout-s", "7200",  # a batch of long prefills shares the engine: first tokens come late
              *shlex.split(args.server_args)]
    flags = {"dense": [], "ours": ["--kv-policies", "--kv-threshold", str(args.kv_threshold)]
             + (["--kv-window-layers"] if args.kv_window_layers else [])}
    measured: dict[str, dict[tuple[int, int], tuple[float, dict, dict]]] = {}
    windows: dict[str, tuple[int, int]] = {}
    compressed_heads = 0.0
    probes: dict[tuple[str, int, int], list[float]] = {}
    for mode in args.modes.split(","):
        print(f"{mode}: starting server ({model.name}, {dtype}, profile {profile_path.name})", flush=True)
        proc, server = start_server(model, work / f"{mode}.log", *common, *flags[mode], api_key=None)
        measured[mode] = {}
        try:
            windows[mode] = windowed_layers(server.log_path)
            if mode == "ours":
                heads = kv_metrics(server.url)
                compressed_heads = sum(v for k, v in heads.items()
                                       if k.startswith("kv_policy_heads:") and not k.endswith(":full"))
            for n in contexts:
                if not windows[mode][0]:  # prefix caching on: later streams share this prefill
                    t0 = time.perf_counter()
                    client_of(server).completions.create(model=server.model, prompt=docs[n], max_tokens=1)
                    print(f"  context {n}: document prefilled in {time.perf_counter() - t0:.1f} s", flush=True)
                for b in batches:
                    probe = host_read_gbs()
                    rate, delta, peaks = run_batch(server, [docs[n] + s for s in suffixes[:b]], args.tokens)
                    probes[(mode, n, b)] = [probe, host_read_gbs()]
                    if mode == "ours" and not delta.get("kv_decode_steps"):
                        raise RuntimeError("ours ran no compressed decode step: is the context below --kv-threshold?")
                    measured[mode][(n, b)] = (rate, delta, peaks)
                    print(f"  context {n} batch {b}: {rate:.2f} tok/s; kv {delta}; peaks {peaks}; "
                          f"host read GB/s before/after {probes[(mode, n, b)]}", flush=True)
        finally:
            stop_server(proc)
    rows = []
    layers = shape.layers
    concurrency_pool = args.concurrency_pool_bytes or args.kv_cache_memory_bytes
    for n in contexts:
        for b in batches:
            held = {mode: pool_bytes_per_request(n, layers, *windows[mode], layer_token_bytes) for mode in measured}
            row: dict[str, object] = {"context": n, "batch": b}
            for mode in measured:
                row[f"{mode}_tok_s"] = round(measured[mode][(n, b)][0], 2)
            if "dense" in measured and "ours" in measured:
                row["speedup"] = round(measured["ours"][(n, b)][0] / measured["dense"][(n, b)][0], 2)
            row["pool_bytes_per_token_dense"] = shape.token_bytes(dtype)
            if "ours" in measured:
                _, delta, peaks = measured["ours"][(n, b)]
                store_per_token = peaks["kv_pool_bytes"] / (b * n)
                row["store_pool_bytes_peak"] = int(peaks["kv_pool_bytes"])
                held["ours"] += round(store_per_token * n)
                row["pool_bytes_per_token_ours"] = round(held["ours"] / n)
                if compressed_heads:
                    row["compressed_head_pool_ratio"] = round(head_token_bytes / (store_per_token / compressed_heads), 2)
                row["offload_bytes_per_token"] = round(delta.get("kv_offload_read_bytes", 0.0) / (b * args.tokens))
                row["kv_errors"] = int(delta.get("kv_errors", 0) + delta.get("kv_unknown_request", 0))
            for mode in measured:
                row[f"max_concurrent_{mode}"] = concurrency_pool // held[mode]
            for mode in measured:
                row[f"host_read_gbs_{mode}"] = probes[(mode, n, b)]
            rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("\n" + " | ".join(keys))
    for row in rows:
        print(" | ".join(str(row.get(k, "")) for k in keys))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "model": str(model),
                                         "host": cpu_model(), "dtype": dtype, "compressed_kv_heads": compressed_heads,
                                         "windowed_layers": windows.get("ours", (0, 0))[0],
                                         "rows": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
