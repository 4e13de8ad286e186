"""Load-test harness for OpenAI-compatible servers.

Replays deterministic long-context workloads (random, long-doc, shared-prefix)
with `vllm bench serve`-style arrivals, records TTFT/TPOT/ITL per request,
computes SLO goodput, A/B-compares two servers and writes JSON, PNG and HTML
reports.
"""
