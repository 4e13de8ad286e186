"""The model's native (trained) context length, read from its HF config.json.

With RoPE scaling, `rope_scaling.original_max_position_embeddings` is the
native length and `max_position_embeddings` the extended one.
"""

from __future__ import annotations

import json
from pathlib import Path


def native_length(model_folder: str | Path) -> int | None:
    """Native context length from `model_folder/config.json`, None if unknown."""
    config_path = Path(model_folder) / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON") from exc
    scaling = config.get("rope_scaling") or {}
    for value in (scaling.get("original_max_position_embeddings"), config.get("max_position_embeddings")):
        if isinstance(value, int) and value > 0:
            return value
    return None
