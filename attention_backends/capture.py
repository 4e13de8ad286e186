"""Capture real per-layer q/k/v from the default model on a long synthetic document.

Runs the HF checkpoint (SmolLM2-135M-Instruct by default, Llama architecture) with
transformers on CPU in float32 over a :mod:`synthetic_doc` prompt, and records for each
requested layer the post-RoPE queries and keys, the values and the pre-RoPE keys, all as
``[heads, N, head_dim]``. Forward hooks read the q/k/v projections and the layer's rotary
``(cos, sin)``; the forward stops after the last requested layer. Beyond the model's native
context, YaRN RoPE scaling stretches the positions. Captures are cached on disk
(``~/.cache/sparse-serve/captures``) keyed by model, length, seed and layers; a capture of
more layers serves any subset.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from .synthetic_doc import generate_document

NATIVE_CONTEXT = 8192
"""Context length the default model was trained for; longer captures use RoPE scaling."""


class CaptureConfig(BaseModel):
    """What to capture; also the cache key."""

    model_config = ConfigDict(frozen=True)

    model_dir: Path
    seq_len: int = Field(gt=0)
    layers: tuple[int, ...] = Field(min_length=1)
    seed: int = 0

    def rope_factor(self, native: int = NATIVE_CONTEXT) -> float:
        """YaRN factor needed to reach ``seq_len`` (1.0 = no scaling)."""
        return 1.0 if self.seq_len <= native else float(2 ** math.ceil(math.log2(self.seq_len / native)))

    def cache_stem(self) -> str:
        """File-name prefix shared by every capture of this model, length and seed."""
        digest = hashlib.sha256(str(self.model_dir.resolve()).encode()).hexdigest()[:8]
        return f"{self.model_dir.name}-{digest}-n{self.seq_len}-s{self.seed}"

    def cache_path(self, cache_dir: Path) -> Path:
        return cache_dir / f"{self.cache_stem()}-L{'_'.join(str(i) for i in sorted(set(self.layers)))}.pt"

    def covering_cache(self, cache_dir: Path) -> Path | None:
        """A cached capture of the same model/length/seed whose layers include all of ours."""
        wanted = set(self.layers)
        for path in sorted(cache_dir.glob(f"{self.cache_stem()}-L*.pt")):
            layers = path.stem.rsplit("-L", 1)[1].split("_")
            if all(part.isdigit() for part in layers) and wanted <= {int(part) for part in layers}:
                return path
        return None


@dataclass(frozen=True)
class LayerCapture:
    """One layer's attention inputs: ``q [Hq, N, D]`` (post-RoPE), ``k, v, k_pre_rope [Hkv, N, D]``."""

    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_pre_rope: torch.Tensor


def default_cache_dir() -> Path:
    """``$SPARSE_SERVE_CACHE_DIR/captures`` or ``~/.cache/sparse-serve/captures`` (the server's cache root)."""
    root = os.environ.get("SPARSE_SERVE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "sparse-serve") / "captures"


class _StopForward(Exception):
    """Raised by a hook once every requested layer is captured."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (HF "rotate half" layout): ``x [H, N, D]``, ``cos, sin [N, D]``."""
    return x * cos + _rotate_half(x) * sin


def load_model(model_dir: Path, seq_len: int) -> tuple[torch.nn.Module, object]:
    """Load the causal LM (float32, SDPA attention) and its tokenizer, with YaRN scaling if needed."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    native = int(config.max_position_embeddings)
    factor = CaptureConfig(model_dir=model_dir, seq_len=seq_len, layers=(0,)).rope_factor(native)
    if factor > 1.0:
        theta = config.rope_parameters["rope_theta"]
        config.rope_parameters = {
            "rope_type": "yarn",
            "rope_theta": theta,
            "factor": factor,
            "original_max_position_embeddings": native,
        }
        config.max_position_embeddings = int(native * factor)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def document_ids(tokenizer: object, seq_len: int, seed: int) -> torch.Tensor:
    """Token ids ``[seq_len]`` of a synthetic document ending with its retrieval question."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    doc = generate_document(seq_len, count, seed=seed)
    body = tokenizer(doc.body, add_special_tokens=False)["input_ids"]
    question = tokenizer(doc.question, add_special_tokens=False)["input_ids"]
    ids = (body + [tokenizer.eos_token_id] * seq_len)[: max(seq_len - len(question), 0)] + question
    return torch.tensor(ids[-seq_len:], dtype=torch.int64)


@torch.no_grad()
def stream_layers(
    model: torch.nn.Module, ids: torch.Tensor, layers: Sequence[int], on_layer: Callable[[LayerCapture], None]
) -> None:
    """Run ``model`` on ``ids [N]`` and hand each requested layer's capture to ``on_layer`` as soon as it exists.

    Only one layer's q/k/v is alive at a time (the callback scores and drops it), so memory stays
    bounded by one layer whatever the model depth; the forward stops after the last requested layer.
    """
    blocks = model.model.layers
    for layer in layers:
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} layers")
    wanted = sorted(set(layers))
    head_dim = int(model.config.head_dim)
    seq_len = int(ids.numel())
    raw: dict[int, dict[str, torch.Tensor]] = {i: {} for i in wanted}

    def finish(layer: int) -> None:
        got = raw.pop(layer)
        parts = {name: got[name].view(seq_len, -1, head_dim).transpose(0, 1).contiguous() for name in ("q_proj", "k_proj", "v_proj")}
        cos, sin = got["cos"], got["sin"]
        on_layer(
            LayerCapture(
                layer=layer,
                q=apply_rope(parts["q_proj"], cos, sin),
                k=apply_rope(parts["k_proj"], cos, sin),
                v=parts["v_proj"],
                k_pre_rope=parts["k_proj"],
            )
        )

    def keep(layer: int, name: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            raw[layer][name] = output[0].detach()
            if len(raw[layer]) == 5:
                finish(layer)
                if layer == wanted[-1]:
                    raise _StopForward

        return hook

    def keep_rope(layer: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            cos, sin = kwargs["position_embeddings"]
            raw[layer]["cos"], raw[layer]["sin"] = cos[0].detach(), sin[0].detach()

        return hook

    handles = []
    for i in wanted:
        attn = blocks[i].self_attn
        handles.append(attn.register_forward_pre_hook(keep_rope(i), with_kwargs=True))
        for name in ("q_proj", "k_proj", "v_proj"):
            handles.append(getattr(attn, name).register_forward_hook(keep(i, name)))
    try:
        model(input_ids=ids.unsqueeze(0), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


def run_capture(config: CaptureConfig) -> list[LayerCapture]:
    """Run the model on the synthetic document and capture the requested layers (no cache)."""
    model, tokenizer = load_model(config.model_dir, config.seq_len)
    out: list[LayerCapture] = []
    stream_layers(model, document_ids(tokenizer, config.seq_len, config.seed), config.layers, out.append)
    return out


def capture_qkv(config: CaptureConfig, cache_dir: Path | None = None) -> list[LayerCapture]:
    """Captured layers for ``config``, from the disk cache when present, else computed and cached.

    A cached capture of a superset of the layers (same model, length and seed) is reused.
    """
    if not (config.model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"no model at {config.model_dir}: run `sparse-serve prepare-model` first (or use random tensors)"
        )
    cache_dir = cache_dir or default_cache_dir()
    found = config.covering_cache(cache_dir) if cache_dir.is_dir() else None
    if found is not None:
        stored = torch.load(found, map_location="cpu", weights_only=True)
        return [LayerCapture(**entry) for entry in stored if entry["layer"] in set(config.layers)]
    path = config.cache_path(cache_dir)
    captures = run_capture(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save([vars(c) for c in captures], tmp)
    tmp.replace(path)
    return captures
