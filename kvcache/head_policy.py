"""From a per-head profile to the KV-head groups whose decode runs through compressed stores.

A profile names a decode-time KV policy per *query* head (:mod:`profiles.kv_choice`), but a
store holds *KV* heads, and under GQA one KV head serves ``Hq / Hkv`` query heads. A KV head
therefore takes the most exact policy among its query heads (``full`` > ``shadowkv`` > ``nosa``
> ``streaming``: NOSA is ShadowKV's selection with a locality constraint, over exact offloaded
keys by default; streaming keeps the least), with that head's parameters. ``full`` KV heads are left to the engine's own kernel;
every other policy becomes one :class:`KvGroup` per layer (KV heads sharing the same
parameters), run through one store per request. Under tensor parallelism a rank sees only its
query heads and the KV heads they read (vLLM's contiguous sharding, KV heads replicated when
there are fewer than ranks). Pure (no vLLM import).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from profiles.schema import KvChoice, Profile

from .params import KvPolicyParams, parse_kv_params
from .store import AnyKvParams

EXACTNESS = {"full": 3, "shadowkv": 2, "nosa": 1, "streaming": 0}
"""Policy order used to merge the query heads of one KV head (higher keeps more)."""


def policy_params(choice: KvChoice) -> AnyKvParams:
    """The policy's parameters: defaults, overridden by the choice's params that are fields of the policy.

    The profiler records statistics (recalls, low-rank errors) in ``params`` next to any
    budget it set; only the policy's own fields (``rank``, ``budget``, ...) are taken.
    """
    model = type(parse_kv_params({"policy": choice.policy}))
    fields = {k: (int(v) if float(v).is_integer() else v) for k, v in choice.params.items() if k in model.model_fields}
    params: KvPolicyParams = parse_kv_params({"policy": choice.policy, **fields})
    return params


def kv_head_choice(choices: list[KvChoice], readers: Iterable[int]) -> KvChoice:
    """The choice a KV head takes: the most exact of its reading query heads' ``choices``."""
    return max((choices[h] for h in readers), key=lambda c: EXACTNESS[c.policy])


@dataclass(frozen=True)
class KvGroup:
    """Local KV heads sharing one compressed policy, and the local query heads reading them (KV-head order)."""

    params: AnyKvParams
    kv_heads: tuple[int, ...]
    q_heads: tuple[int, ...]

    @cached_property
    def kv_index(self) -> slice | list[int]:
        """Index of ``kv_heads`` along a head axis: a slice (a view, no copy) where they are consecutive."""
        return _head_index(self.kv_heads)

    @cached_property
    def q_index(self) -> slice | list[int]:
        """Index of ``q_heads`` along a head axis, as :attr:`kv_index`."""
        return _head_index(self.q_heads)


def _head_index(heads: tuple[int, ...]) -> slice | list[int]:
    if heads and list(heads) == list(range(heads[0], heads[0] + len(heads))):
        return slice(heads[0], heads[0] + len(heads))
    return list(heads)


def rank_kv_heads(q_heads: range, num_q_heads: int, num_kv_heads: int) -> list[int]:
    """Global KV heads read by the global query heads ``q_heads`` (ascending)."""
    ratio = num_q_heads // num_kv_heads
    return sorted({h // ratio for h in q_heads})


def layer_kv_groups(choices: list[KvChoice], q_heads: range, num_q_heads: int, num_kv_heads: int,
                    head_dim: int) -> tuple[KvGroup, ...]:
    """Compressed KV groups of one layer for the rank owning global query heads ``q_heads``.

    ``choices``: the layer's per-query-head choices (all ``num_q_heads``). Local indices: query
    head ``h`` of the rank is ``q_heads[h]``; local KV head ``j`` is the ``j``-th KV head the
    rank reads.
    """
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    ratio = num_q_heads // num_kv_heads
    kv_global = rank_kv_heads(q_heads, num_q_heads, num_kv_heads)
    grouped: dict[AnyKvParams, tuple[list[int], list[int]]] = {}
    for local_kv, g in enumerate(kv_global):
        readers = [h for h in q_heads if h // ratio == g]
        best = kv_head_choice(choices, readers)
        if best.policy == "full":
            continue
        kv, q = grouped.setdefault(policy_params(best), ([], []))
        kv.append(local_kv)
        q.extend(h - q_heads.start for h in readers)
    # a store factors its own KV heads' keys: the rank is capped at their concatenated width
    return tuple(
        KvGroup(params=_cap_rank(params, len(kv) * head_dim), kv_heads=tuple(kv), q_heads=tuple(q))
        for params, (kv, q) in grouped.items()
    )


def _cap_rank(params: AnyKvParams, width: int) -> AnyKvParams:
    rank = getattr(params, "rank", None)
    return params if rank is None or rank <= width else params.model_copy(update={"rank": width})


@dataclass(frozen=True)
class KvPlan:
    """Compressed KV groups of every layer for one tensor-parallel rank."""

    layers: tuple[tuple[KvGroup, ...], ...]

    @classmethod
    def from_profile(cls, profile: Profile, q_heads: range) -> KvPlan:
        m = profile.model
        return cls(layers=tuple(
            layer_kv_groups([h.kv for h in layer.heads], q_heads, m.num_q_heads, m.num_kv_heads, m.head_dim)
            for layer in profile.layers
        ))

    def groups(self, layer: int) -> tuple[KvGroup, ...]:
        if not 0 <= layer < len(self.layers):
            raise ValueError(f"layer {layer} is not in the profile (it has {len(self.layers)} layers)")
        return self.layers[layer]

    @property
    def any_compressed(self) -> bool:
        return any(self.layers)

    def windowed_layers(self, num_kv_heads: int) -> tuple[int, ...]:
        """Layers whose ``num_kv_heads`` (local) KV heads are all compressed: no exact head needs their old KV."""
        return tuple(i for i, groups in enumerate(self.layers)
                     if sum(len(g.kv_heads) for g in groups) == num_kv_heads)


def kv_policy_counts(profile: Profile) -> dict[str, int]:
    """How many KV heads (all layers, whole model) run each policy after the GQA merge."""
    m = profile.model
    ratio = m.num_q_heads // m.num_kv_heads
    counts = dict.fromkeys(EXACTNESS, 0)
    for layer in profile.layers:
        choices = [h.kv for h in layer.heads]
        for g in range(m.num_kv_heads):
            counts[kv_head_choice(choices, range(g * ratio, (g + 1) * ratio)).policy] += 1
    return counts
