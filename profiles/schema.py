"""The per-head profile file: pydantic schema, model fingerprint and strict loading.

A profile records, for every (layer, query head) of one model, the prefill attention pattern
chosen offline (MInference / FlexPrefill patterns from :mod:`attention_backends.patterns`) and
a decode-time KV policy, with the measured recall and density. A model fingerprint
(architecture, layer and head counts, head_dim, RoPE parameters) makes a profile built for
another model fail loudly. Loading validates everything before returning: errors name the
file and the JSON path of the bad field, and nothing is half-loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attention_backends.patterns import PatternParams

SCHEMA_VERSION = 1
TOOL_VERSION = "0.1.0"

KvPolicy = Literal["full", "shadowkv", "nosa", "streaming"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelFingerprint(_Strict):
    """What a profile must agree with in the model it is applied to."""

    architecture: str
    num_layers: int = Field(gt=0)
    num_q_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    rope_theta: float = Field(gt=0)
    rope_type: str = "default"
    rope_factor: float = Field(default=1.0, gt=0)


class KvChoice(_Strict):
    """Decode-time KV policy of one head, with the statistics that led to it."""

    policy: KvPolicy
    params: dict[str, float] = Field(default_factory=dict)


class HeadProfile(_Strict):
    """One query head: chosen prefill pattern, KV policy, and the pattern's measured recall / density."""

    head: int = Field(ge=0)
    prefill: PatternParams
    kv: KvChoice
    recall: float = Field(ge=0.0, le=1.0)
    density: float = Field(ge=0.0, le=1.0)


class LayerProfile(_Strict):
    """All query heads of one layer, in head order."""

    layer: int = Field(ge=0)
    heads: list[HeadProfile] = Field(min_length=1)

    @model_validator(mode="after")
    def _heads_in_order(self) -> LayerProfile:
        numbers = [h.head for h in self.heads]
        if numbers != list(range(len(numbers))):
            raise ValueError(f"heads must be numbered 0..{len(numbers) - 1} in order; got {numbers}")
        return self


class CalibrationSettings(_Strict):
    """How the profile was measured."""

    lengths: list[int] = Field(min_length=1)
    target_recall: float = Field(gt=0.0, le=1.0)
    seed: int = 0
    query_rows: int = Field(gt=0, description="Sampled query rows (later half of the sequence) per length.")
    command: str = ""
    tasks: list[str] = Field(default_factory=list, description="Calibration prompts scored at each length.")
    pattern_cost: dict[str, float] = Field(
        default_factory=dict, description="Measured time per kept pair of each pattern over dense time per pair."
    )
    dense_layers: int = Field(
        0, ge=0, description="The first layers, whose heads were all kept dense whatever their scores (0 in older files)."
    )
    retrieval_heads: float | None = Field(
        None, ge=0.0, lt=1.0, description="When set: the fraction of heads kept dense by lowest streaming recall, "
        "every other head A-shape (DuoAttention-style); the recall target then chose only KV policies.",
    )
    retrieval_top_k: int | None = Field(
        None, gt=0, description="With retrieval_heads: those heads run block-sparse with this many key blocks per "
        "query block instead of dense.",
    )


class Profile(_Strict):
    """A whole profile file."""

    schema_version: Literal[1] = SCHEMA_VERSION
    tool_version: str = TOOL_VERSION
    model: ModelFingerprint
    calibration: CalibrationSettings
    layers: list[LayerProfile] = Field(min_length=1)

    @model_validator(mode="after")
    def _matches_fingerprint(self) -> Profile:
        if len(self.layers) != self.model.num_layers:
            raise ValueError(f"{len(self.layers)} layers listed but the fingerprint says {self.model.num_layers}")
        for i, layer in enumerate(self.layers):
            if layer.layer != i:
                raise ValueError(f"layers must be numbered 0..{self.model.num_layers - 1} in order; entry {i} is {layer.layer}")
            if len(layer.heads) != self.model.num_q_heads:
                raise ValueError(f"layer {i} lists {len(layer.heads)} heads but the model has {self.model.num_q_heads} query heads")
        return self


class ProfileError(ValueError):
    """A profile file that cannot be used: the message names the file and the bad field."""


def fingerprint_from_config(config: object) -> ModelFingerprint:
    """Fingerprint of a transformers ``PretrainedConfig`` (Llama / Qwen / Mistral family)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("model config has no RoPE theta (rope_parameters.rope_theta)")
    num_q = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // num_q
    archs = getattr(config, "architectures", None) or [type(config).__name__]
    return ModelFingerprint(
        architecture=str(archs[0]),
        num_layers=int(config.num_hidden_layers),
        num_q_heads=num_q,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_q),
        head_dim=int(head_dim),
        rope_theta=float(theta),
        rope_type=str(rope.get("rope_type", "default")),
        rope_factor=float(rope.get("factor", 1.0)),
    )


def fingerprint_from_dir(model_dir: Path) -> ModelFingerprint:
    """Fingerprint of the HF model folder ``model_dir`` (reads only its config)."""
    from transformers import AutoConfig

    if not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"no model config at {model_dir}/config.json")
    return fingerprint_from_config(AutoConfig.from_pretrained(model_dir))


def _json_path(loc: tuple[int | str, ...]) -> str:
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_profile(data: object, source: str) -> Profile:
    """Validate already-parsed JSON; :class:`ProfileError` names ``source`` and the JSON path."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid profile ({exc.error_count()} error(s))"]
        for err in exc.errors():
            lines.append(f"  at {_json_path(tuple(err['loc']))}: {err['msg']}")
        raise ProfileError("\n".join(lines)) from None


def load_profile(path: Path) -> Profile:
    """Read and validate a profile file (all or nothing)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    return parse_profile(data, str(path))


def check_fingerprint(profile: Profile, model: ModelFingerprint, source: str = "profile") -> None:
    """Raise :class:`ProfileError` listing every field where ``profile`` and ``model`` disagree."""
    theirs, ours = profile.model.model_dump(), model.model_dump()
    diffs = [f"$.model.{k}: profile has {theirs[k]!r}, model has {ours[k]!r}" for k in ours if theirs[k] != ours[k]]
    if diffs:
        raise ProfileError(f"{source}: profile was built for another model\n  " + "\n  ".join(diffs))


def save_profile(profile: Profile, path: Path) -> None:
    """Write ``profile`` as indented JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(profile.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
