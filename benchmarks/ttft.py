"""Time to first token, dense vs sparse prefill, through the real server (not a test).

Starts ``sparse-serve serve`` twice from this process, same settings: once ``--no-sparse`` (plain
vLLM attention) and once with the per-head profile. The default model is extended with YaRN to
the longest length; the shipped profile calibrated on that variant is used, else the native one
re-bound to the extended model's fingerprint (an approximation, printed). For every length, a
fresh synthetic document of exactly that many prompt tokens (prefix caching off) is sent with ``max_tokens=1`` and the client measures the
first streamed token. Rows: ``seq_len, dense_ttft_s, sparse_ttft_s, speedup``, plus whether
both runs answered the document's retrieval question the same way, and ``host_read_gbs_<mode>``:
the host's memory-read speed before and after that mode's prompts (:mod:`benchmarks.host_probe`;
where the modes' figures differ, the host moved between them and the speedup carries that drift).

    python benchmarks/ttft.py --lengths 16384,32768,65536 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import openai
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attention_backends.synthetic_doc import generate_document  # noqa: E402
from benchmarks.host_probe import host_read_gbs  # noqa: E402
from benchmarks.kv_shape import KvShape  # noqa: E402
from profiles.schema import fingerprint_from_dir, load_profile, save_profile  # noqa: E402
from profiles.variants import transfer  # noqa: E402
from server.model_prep import ensure_model  # noqa: E402
from server.rope_variant import yarn_variant  # noqa: E402
from server.sparse_setup import (  # noqa: E402
    DUO_PROFILES_DIR, PROFILES_DIR, RECALL_PROFILES_DIR, SHIPPED_PROFILE, shipped_profiles)
from tests.conftest import start_server, stop_server  # noqa: E402


def prompt_of(tokenizer, length: int, seed: int) -> tuple[list[int], str]:
    """Token ids of exactly ``length`` tokens ending with a retrieval question, and its answer."""
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    doc = generate_document(length, count, seed=seed)
    question = tokenizer.encode(doc.question, add_special_tokens=False)
    body = tokenizer.encode(doc.body, add_special_tokens=False)[: length - len(question)]
    return body + question, doc.answer


PROFILE_SETS = {"default": PROFILES_DIR, "duo": DUO_PROFILES_DIR, "recall": RECALL_PROFILES_DIR}
"""The shipped profile folders, by the flag that picks them."""


def add_profile_set_args(ap: argparse.ArgumentParser) -> None:
    """``--duo`` / ``--recall``: take the profile from ``profiles/duo/`` or ``profiles/recall/`` instead."""
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--duo", dest="profile_set", action="store_const", const="duo",
                       help="the faster retrieval-head split (profiles/duo/, F = 0.10) for the model's RoPE variant")
    group.add_argument("--recall", dest="profile_set", action="store_const", const="recall",
                       help="the recall-target profile (profiles/recall/, the default until 2026-12-05)")
    ap.set_defaults(profile_set="default")


def shipped_profile_for(model: Path, fallback: Path, folder: Path = PROFILES_DIR) -> Path:
    """The profile in ``folder`` calibrated on ``model``'s RoPE variant, else its native one re-bound to it."""
    fingerprint = fingerprint_from_dir(model)
    for path in shipped_profiles(folder):
        if load_profile(path).model == fingerprint:
            print(f"profile: {path.relative_to(PROFILES_DIR.parent)} (calibrated on this RoPE variant)", flush=True)
            return path
    native = folder / SHIPPED_PROFILE.name
    print(f"profile: {native.relative_to(PROFILES_DIR.parent)} re-bound to {model.name} (calibrated at native RoPE: "
          "approximate)", flush=True)
    save_profile(transfer(load_profile(native), fingerprint), fallback)
    return fallback


def measure(server, prompts: dict[int, list[int]], answer_tokens: int) -> dict[int, tuple[float, str]]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key or "none", max_retries=0,
                           timeout=3600)
    results = {}
    for length, ids in prompts.items():
        t0 = time.perf_counter()
        stream = client.completions.create(model=server.model, prompt=ids, max_tokens=answer_tokens,
                                           temperature=0, stream=True)
        ttft, text = None, ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text and ttft is None:
                ttft = time.perf_counter() - t0
            text += chunk.choices[0].text if chunk.choices else ""
        results[length] = (ttft if ttft is not None else float("nan"), text)
        print(f"  {length:>6} tokens: TTFT {results[length][0]:.2f} s, answer {text.strip()[:24]!r}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="16384,32768,65536", help="comma-separated prompt lengths")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--dtype", default="auto", help="server --dtype (auto: float32 on CPUs without native bf16)")
    ap.add_argument("--chunk", type=int, default=8192, help="--max-num-batched-tokens of both servers")
    ap.add_argument("--block-size", type=int, default=None, help="--block-size of both servers (default: vLLM's)")
    ap.add_argument("--threshold", type=int, default=None, help="--sparse-threshold (default: server's)")
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                    help="vLLM's KV pool of both servers (default: one longest prompt in float32, plus 25%%)")
    ap.add_argument("--modes", default="dense,sparse")
    ap.add_argument("--profile", type=Path, default=None,
                    help="profile of the sparse server (default: the shipped one for the model's RoPE variant)")
    add_profile_set_args(ap)
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    model = yarn_variant(ensure_model(), max(lengths) + args.answer_tokens + 64)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = {n: prompt_of(tokenizer, n, seed=n) for n in lengths}
    work = Path(tempfile.mkdtemp(prefix="ttft-"))
    profile = args.profile or shipped_profile_for(model, work / "profile.json", PROFILE_SETS[args.profile_set])
    max_len = max(lengths) + args.answer_tokens + 64
    # default pool: one longest request in float32 with 25% to spare (vLLM refuses to start below one)
    pool = args.kv_cache_memory_bytes or int(max_len * KvShape.of(model).token_bytes("float32") * 1.25)
    common = ["--dtype", args.dtype, "--max-model-len", str(max_len),
              "--max-num-batched-tokens", str(args.chunk), "--no-enable-prefix-caching",
              "--kv-cache-memory-bytes", str(pool), "--request-timeout-s", "7200"]
    common += ["--block-size", str(args.block_size)] if args.block_size else []
    flags = {"dense": ["--no-sparse"], "sparse": ["--profile", str(profile)]}
    if args.threshold is not None:
        flags["sparse"] += ["--sparse-threshold", str(args.threshold)]
    results, probes = {}, {}
    for mode in args.modes.split(","):
        print(f"{mode}: starting server ({model.name}, {args.dtype})", flush=True)
        proc, server = start_server(model, work / f"{mode}.log", *common, *flags[mode], api_key=None)
        try:
            probe = host_read_gbs()
            results[mode] = measure(server, {n: ids for n, (ids, _) in prompts.items()}, args.answer_tokens)
            probes[mode] = [probe, host_read_gbs()]
            print(f"  host read GB/s before/after: {probes[mode]}", flush=True)
        finally:
            stop_server(proc)
    rows = []
    for n in lengths:
        row: dict[str, object] = {"seq_len": n}
        for mode in results:
            row[f"{mode}_ttft_s"] = round(results[mode][n][0], 3)
            row[f"{mode}_correct"] = prompts[n][1] in results[mode][n][1]
        if "dense" in results and "sparse" in results:
            row["speedup"] = round(results["dense"][n][0] / results["sparse"][n][0], 2)
            row["same_answer"] = results["dense"][n][1] == results["sparse"][n][1]
        for mode in results:
            row[f"host_read_gbs_{mode}"] = probes[mode]
        rows.append(row)
    print("\n" + " | ".join(rows[0]))
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "model": str(model),
                                         "rows": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
