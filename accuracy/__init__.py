"""Accuracy harness: an offline RULER-style long-context suite run over HTTP.

Generates needle-in-a-haystack, variable-tracking, word-extraction and fact-QA
samples sized in the target model's tokens, sends them to any
OpenAI-compatible server through `loadtests` (same client, same loopback
guard, same A/B interleaving), scores them as RULER does and reports a
task x length table, JSON and a needle depth x length heat-map.
"""
