"""A RoPE-scaled (YaRN) view of a model folder, for prompts beyond its native context.

The default model is trained for 8K tokens; long-context speed runs (16K-64K) extend it with
YaRN (Peng et al., 2023) as vLLM and transformers implement it from ``rope_parameters``. The
variant is a sibling folder whose ``config.json`` carries the scaling and whose other files
are symlinks to the original (no weights copied).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def yarn_variant(model_dir: Path, context: int) -> Path:
    """Folder of ``model_dir`` scaled with YaRN to at least ``context`` tokens (itself if it fits)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    native = int(config["max_position_embeddings"])
    if context <= native:
        return model_dir
    factor = float(2 ** math.ceil(math.log2(context / native)))
    target = model_dir.with_name(f"{model_dir.name}-yarn{int(factor)}x")
    rope = dict(config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10000.0)})
    rope.update(rope_type="yarn", factor=factor, original_max_position_embeddings=native)
    config.update(rope_parameters=rope, max_position_embeddings=int(native * factor))
    target.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        link = target / item.name
        if item.name != "config.json" and not link.exists():
            link.symlink_to(item.resolve())
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return target
