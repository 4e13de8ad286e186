"""Rotary position embedding (RoPE, Su et al. 2021) applied to keys at arbitrary positions.

ShadowKV stores keys *before* RoPE in low-rank form and rotates the rebuilt keys at their own
positions at decode time, so RoPE must be applicable to any subset of positions. This module
uses the "rotate_half" (GPT-NeoX) layout of HF transformers' ``LlamaRotaryEmbedding`` and
vLLM's ``is_neox_style=True``: feature ``i`` and feature ``i + D/2`` form one rotated pair with
angle ``position * inv_freq[i]``. Scaled RoPE variants (YaRN, NTK, Llama-3) only change
``inv_freq`` and a cos/sin multiplier (``attention_scaling``), both of which can be passed in.
"""

from __future__ import annotations

from functools import lru_cache

import torch


def rope_inv_freq(head_dim: int, theta: float = 10000.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Default RoPE inverse frequencies ``theta ** (-2i / D)``: ``float32 [D/2]``."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number; got {head_dim}")
    if not theta > 0:
        raise ValueError(f"theta must be positive; got {theta}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    return (1.0 / (float(theta) ** exponents)).float()


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of integer ``positions [...]`` for ``inv_freq [D/2]``: two ``float32 [..., D]``.

    Angles are ``float32(position) * float32(inv_freq)`` in float32, exactly as HF transformers and
    vLLM compute them, so rotated keys match the model's own (a float64 angle would differ from
    the model by up to ~1e-3 rad at 32K positions).
    """
    if inv_freq.dim() != 1:
        raise ValueError(f"inv_freq must be 1-D; got {tuple(inv_freq.shape)}")
    if positions.dtype.is_floating_point:
        raise ValueError(f"positions must be integers; got {positions.dtype}")
    angles = positions.to(inv_freq.device, torch.float32).unsqueeze(-1) * inv_freq.float()
    cos, sin = angles.cos() * attention_scaling, angles.sin() * attention_scaling
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


class RopeTable:
    """``cos, sin`` of positions ``[0, len)`` for one ``inv_freq`` and multiplier, grown on demand.

    A decode step rotates ~2K rebuilt keys at scattered positions; reading their cos/sin from a
    table replaces two transcendental evaluations per element by a gather (same float32 values
    as :func:`rope_cos_sin`, which builds the table). It holds the ``D/2`` distinct columns.
    """

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0) -> None:
        self.inv_freq, self.attention_scaling = inv_freq.float(), attention_scaling
        self._cos = self._sin = torch.empty(0, inv_freq.numel(), device=inv_freq.device)

    def __len__(self) -> int:
        return self._cos.shape[0]

    def half_cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin float32 [..., D/2]`` (the distinct halves) of non-negative integer ``positions [...]``."""
        shape = (*positions.shape, self._cos.shape[1])
        if positions.numel() == 0:
            return self._cos.new_empty(shape), self._sin.new_empty(shape)
        if int(positions.min()) < 0:
            raise ValueError("RopeTable holds non-negative positions only")
        self.halves(int(positions.max()) + 1)
        flat = positions.reshape(-1).to(self._cos.device)
        return self._cos.index_select(0, flat).reshape(shape), self._sin.index_select(0, flat).reshape(shape)

    def halves(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole table ``cos, sin float32 [>= length, D/2]`` (contiguous), grown to cover ``length`` positions."""
        if length > len(self):
            size = max(length, 2 * len(self), 1024)
            cos, sin = rope_cos_sin(torch.arange(size, device=self.inv_freq.device), self.inv_freq,
                                    self.attention_scaling)
            half = self.inv_freq.numel()
            self._cos, self._sin = cos[:, :half].contiguous(), sin[:, :half].contiguous()
        return self._cos, self._sin

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin float32 [..., D]`` of non-negative integer ``positions [...]`` (as :func:`rope_cos_sin`)."""
        cos, sin = self.half_cos_sin(positions)
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


@lru_cache(maxsize=8)
def _shared_table(freqs: tuple[float, ...], attention_scaling: float, device: str) -> RopeTable:
    return RopeTable(torch.tensor(freqs, dtype=torch.float32, device=device), attention_scaling)


def shared_rope_table(inv_freq: torch.Tensor, attention_scaling: float = 1.0) -> RopeTable:
    """The process-wide :class:`RopeTable` of ``inv_freq`` (every store of a model shares one)."""
    return _shared_table(tuple(inv_freq.float().tolist()), float(attention_scaling), str(inv_freq.device))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[..., D] -> [..., D]``: ``(x1, x2) -> (-x2, x1)`` with ``x1, x2`` the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(
    x: torch.Tensor,
    positions: torch.Tensor,
    *,
    theta: float = 10000.0,
    inv_freq: torch.Tensor | None = None,
    attention_scaling: float = 1.0,
    table: RopeTable | None = None,
) -> torch.Tensor:
    """Rotate ``x [H, L, D]`` (pre-RoPE keys or queries) at integer ``positions [L]`` (or ``[H, L]``, per head); same shape and dtype.

    ``inv_freq [D/2]`` overrides the default frequencies of ``theta`` (pass YaRN-scaled ones
    here, with their ``attention_scaling``); ``table`` (non-negative positions) replaces both.
    The rotation is done in float32.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [heads, len, head_dim]; got {tuple(x.shape)}")
    _, length, dim = x.shape
    if positions.shape not in ((length,), (x.shape[0], length)):
        raise ValueError(f"positions must be [{length}] or [{x.shape[0]}, {length}]; got {tuple(positions.shape)}")
    if table is not None:
        inv_freq, attention_scaling = table.inv_freq, table.attention_scaling
    if inv_freq is None:
        inv_freq = rope_inv_freq(dim, theta, device=x.device)
    if inv_freq.shape != (dim // 2,):
        raise ValueError(f"inv_freq must be [{dim // 2}] for head_dim {dim}; got {tuple(inv_freq.shape)}")
    xf = x.float()
    if table is not None:  # the rotation written out per half: same float32 operations as below
        c, s = table.half_cos_sin(positions)
        x1, x2 = xf[..., : dim // 2], xf[..., dim // 2 :]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
    cos, sin = rope_cos_sin(positions.to(x.device), inv_freq.to(x.device), attention_scaling)
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def remove_rope(
    x: torch.Tensor,
    positions: torch.Tensor,
    *,
    inv_freq: torch.Tensor,
    attention_scaling: float = 1.0,
    table: RopeTable | None = None,
) -> torch.Tensor:
    """Undo :func:`apply_rope`: the pre-RoPE ``[H, L, D]`` of keys rotated at ``positions`` (``[L]`` or ``[H, L]``).

    A rotation by ``-angle`` divided by the cos/sin multiplier; exact up to float32 round-off.
    The engine's paged cache holds rotated keys only, and this recovers the pre-RoPE keys a
    low-rank fit needs. ``table``: :func:`inverse_rope_table` of the same ``inv_freq`` and
    multiplier (non-negative positions), read instead of evaluating cos/sin; same float32 values
    (cos is even and sin odd, so the table's entries at ``+angle`` give those at ``-angle``).
    """
    if table is None:
        return apply_rope(x, -positions, inv_freq=inv_freq, attention_scaling=1.0 / attention_scaling)
    if x.dim() != 3 or positions.shape not in ((x.shape[1],), x.shape[:2]):
        raise ValueError(f"x must be [heads, len, head_dim] and positions [len] or [heads, len]; got "
                         f"{tuple(x.shape)}, {tuple(positions.shape)}")
    c, s = (t.to(x.device) for t in table.half_cos_sin(positions))
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * c + x2 * s, x2 * c - x1 * s), dim=-1).to(x.dtype)


def inverse_rope_table(inv_freq: torch.Tensor, attention_scaling: float = 1.0) -> RopeTable:
    """The shared table :func:`remove_rope` reads for keys rotated with ``inv_freq`` and ``attention_scaling``."""
    return shared_rope_table(inv_freq, 1.0 / attention_scaling)


def model_rope(config: object) -> tuple[torch.Tensor, float]:
    """``inv_freq float32 [D/2]`` and ``attention_scaling`` of a Llama-family HF config (YaRN etc. included)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    emb = LlamaRotaryEmbedding(config=config)
    return emb.inv_freq.float().cpu(), float(emb.attention_scaling)
