"""Low-rank pre-RoPE keys (ShadowKV, Sun et al. 2024).

Pre-RoPE keys of one layer are strongly low-rank; post-RoPE keys are not (the rotation spreads
them). ShadowKV therefore keeps, per sequence and layer, a truncated SVD of the pre-RoPE keys on
the accelerator and rebuilds the keys of the few chunks a decode step reads, rotating them at
their own positions.

Layout (as ShadowKV): the keys of all KV heads of a layer are concatenated along the feature
axis, ``[Hkv, N, D] -> K [N, Hkv*D]``, and one rank-``r`` factorization ``K ~ A @ B`` is fitted
with ``A = U_r * S_r [N, r]`` and ``B = Vh_r [r, Hkv*D]`` (orthonormal rows). One shared basis
costs ``r`` numbers per token for all heads instead of ``r`` per head, and heads of a layer
share much of their key subspace. The rank is therefore relative to ``Hkv*D`` (ShadowKV: 160 of
1024 for Llama-3-8B; 32 of 192 is the same ratio for SmolLM2-135M).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rope import apply_rope


@dataclass(frozen=True)
class LowRankKeys:
    """Rank-``r`` factors of one layer's pre-RoPE keys: ``keys ~ (a @ b)`` reshaped to ``[Hkv, N, D]``.

    ``a [N, r]`` (left singular vectors times singular values), ``b [r, Hkv*D]`` (orthonormal rows).
    """

    a: torch.Tensor
    b: torch.Tensor
    num_kv_heads: int
    head_dim: int

    @property
    def rank(self) -> int:
        return self.b.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.a.shape[0]

    def nbytes(self) -> int:
        """Bytes held by both factors."""
        return self.a.numel() * self.a.element_size() + self.b.numel() * self.b.element_size()


def _flatten(k: torch.Tensor) -> torch.Tensor:
    """``[Hkv, N, D] -> [N, Hkv*D]`` (heads concatenated along features)."""
    if k.dim() != 3:
        raise ValueError(f"keys must be [kv_heads, seq_len, head_dim]; got {tuple(k.shape)}")
    hkv, n, d = k.shape
    return k.permute(1, 0, 2).reshape(n, hkv * d)


def _unflatten(x: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """``[L, Hkv*D] -> [Hkv, L, D]``."""
    return x.reshape(x.shape[0], num_kv_heads, head_dim).permute(1, 0, 2)


@torch.no_grad()
def fit_lowrank(
    k_pre_rope: torch.Tensor, rank: int, *, compute_dtype: torch.dtype = torch.float64
) -> LowRankKeys:
    """Truncated SVD of ``k_pre_rope [Hkv, N, D]`` at ``rank`` (clamped to ``min(N, Hkv*D)``).

    The SVD runs in ``compute_dtype`` (float64 by default: full rank then reproduces the keys to
    float32 round-off); the factors are returned in the keys' dtype on the keys' device.
    """
    if rank <= 0:
        raise ValueError(f"rank must be positive; got {rank}")
    hkv, n, d = k_pre_rope.shape if k_pre_rope.dim() == 3 else (0, 0, 0)
    flat = _flatten(k_pre_rope)
    if n == 0:
        raise ValueError("cannot fit an empty key sequence")
    r = min(rank, n, hkv * d)
    u, s, vh = torch.linalg.svd(flat.to(compute_dtype), full_matrices=False)
    a = (u[:, :r] * s[:r]).to(k_pre_rope.dtype)
    b = vh[:r].to(k_pre_rope.dtype)
    return LowRankKeys(a=a.contiguous(), b=b.contiguous(), num_kv_heads=hkv, head_dim=d)


def rebuild(factors: LowRankKeys, positions: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-RoPE keys of ``positions [L]`` (rows of the fit): ``[Hkv, L, D]`` (or ``[len(heads), L, D]``)."""
    pos = positions.to(factors.a.device, torch.int64)
    if pos.numel() and (pos.min() < 0 or pos.max() >= factors.num_tokens):
        raise ValueError(f"positions must lie in [0, {factors.num_tokens}) (the fitted tokens)")
    d = factors.head_dim
    if heads is None:
        return _unflatten(factors.a[pos] @ factors.b, factors.num_kv_heads, d)
    cols = (heads.to(factors.b.device, torch.int64).unsqueeze(1) * d + torch.arange(d, device=factors.b.device)).reshape(-1)
    return _unflatten(factors.a[pos] @ factors.b[:, cols], heads.numel(), d)


def rebuild_rotated(
    factors: LowRankKeys,
    positions: torch.Tensor,
    *,
    inv_freq: torch.Tensor | None = None,
    theta: float = 10000.0,
    attention_scaling: float = 1.0,
) -> torch.Tensor:
    """Post-RoPE keys of ``positions [L]`` rebuilt from the factors and rotated there: ``[Hkv, L, D]``."""
    pre = rebuild(factors, positions)
    return apply_rope(pre, positions.to(pre.device), theta=theta, inv_freq=inv_freq, attention_scaling=attention_scaling)


@torch.no_grad()
def reconstruction_error(k_pre_rope: torch.Tensor, factors: LowRankKeys) -> torch.Tensor:
    """Relative Frobenius error ``||K - A B|| / ||K||`` per KV head: ``float32 [Hkv]``."""
    n = k_pre_rope.shape[1]
    if n != factors.num_tokens:
        raise ValueError(f"keys have {n} tokens but the factors were fitted on {factors.num_tokens}")
    approx = rebuild(factors, torch.arange(n, device=factors.a.device)).to(k_pre_rope.device).double()
    exact = k_pre_rope.double()
    num = (exact - approx).pow(2).sum(dim=(1, 2))
    den = exact.pow(2).sum(dim=(1, 2)).clamp(min=1e-300)
    return (num / den).sqrt().float()


@torch.no_grad()
def relative_error(k_pre_rope: torch.Tensor, rank: int) -> float:
    """Relative Frobenius error of the best rank-``rank`` fit of the whole layer (all heads together)."""
    s = torch.linalg.svdvals(_flatten(k_pre_rope).double())
    total = (s**2).sum().clamp(min=1e-300)
    return float(((s[rank:] ** 2).sum() / total).sqrt())
