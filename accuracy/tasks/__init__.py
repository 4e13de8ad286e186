"""RULER-style task generators (offline, deterministic, sized in model tokens)."""
