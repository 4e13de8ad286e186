"""Registry of the KV stores of live requests: one store per (request id, key), freed per request.

The engine creates a request's stores at prefill, reads them at each decode step and frees them
when the request finishes, is aborted or is preempted. A preempted request that is recomputed
calls :meth:`StoreRegistry.create` again: the old store of that (request, key) is freed and
a fresh one replaces it. The key names the store within the request: a layer, or (layer, group)
when a layer's KV heads are split over several policies. A request's windowed layers also hold
their exact :class:`~kvcache.history.KvHistory` here until the layer's stores are built from it.
Totals over all stores make leaks observable (they must return to 0), and the heap pages freed
stores leave go back to the OS (:class:`~kvcache.host_memory.HeapTrimmer`).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from .history import KvHistory
from .host_memory import HeapTrimmer
from .store import AnyKvParams, SequenceKvStore


def _history_key(layer: int) -> tuple[str, int]:
    return ("history", layer)


class StoreRegistry:
    """``{request_id: {key: SequenceKvStore | KvHistory}}`` with byte totals."""

    def __init__(self, trimmer: HeapTrimmer | None = None) -> None:
        self._stores: dict[Hashable, dict[Hashable, SequenceKvStore | KvHistory]] = {}
        self.trimmer = HeapTrimmer() if trimmer is None else trimmer

    def __len__(self) -> int:
        """Number of requests holding stores."""
        return len(self._stores)

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self._stores

    def create(self, request_id: Hashable, key: Hashable, params: AnyKvParams, num_kv_heads: int, head_dim: int, **kwargs: object) -> SequenceKvStore:
        """A fresh store for ``(request_id, key)`` (an existing one is freed first); ``kwargs`` go to :class:`SequenceKvStore`."""
        stores = self._stores.setdefault(request_id, {})
        if key in stores:
            self._release(stores.pop(key))
        store = SequenceKvStore(params, num_kv_heads, head_dim, **kwargs)
        stores[key] = store
        return store

    def get(self, request_id: Hashable, key: Hashable) -> SequenceKvStore:
        """The store of ``(request_id, key)``; ``KeyError`` if there is none."""
        store = self.find(request_id, key)
        if store is None:
            raise KeyError(f"no KV store for request {request_id!r}, key {key!r}")
        return store

    def find(self, request_id: Hashable, key: Hashable) -> SequenceKvStore | None:
        """The store of ``(request_id, key)``, or ``None``."""
        store = self._stores.get(request_id, {}).get(key)
        return store if isinstance(store, SequenceKvStore) else None

    def history(self, request_id: Hashable, layer: int, num_kv_heads: int = 0, head_dim: int = 0,
                dtype: torch.dtype | None = None) -> KvHistory | None:
        """The request's history of ``layer``; created empty when ``dtype`` is given and there is none."""
        stores = self._stores.get(request_id, {})
        found = stores.get(_history_key(layer))
        if found is None and dtype is not None:
            found = self._stores.setdefault(request_id, {})[_history_key(layer)] = KvHistory(num_kv_heads, head_dim,
                                                                                             dtype=dtype)
        return found if isinstance(found, KvHistory) else None

    def drop_history(self, request_id: Hashable, layer: int) -> None:
        """Free the request's history of ``layer`` (its stores hold the sequence now)."""
        found = self._stores.get(request_id, {}).pop(_history_key(layer), None)
        if found is not None:
            self._release(found)

    def free(self, request_id: Hashable) -> int:
        """Free every store of a request (no-op if unknown); returns the bytes released (both tiers)."""
        return sum(self._release(store) for store in self._stores.pop(request_id, {}).values())

    def _release(self, store: SequenceKvStore | KvHistory) -> int:
        """Free one store or history; returns its bytes (both tiers), counted towards the next heap trim."""
        released = store.pool_bytes() + store.offload_bytes()
        store.free()
        self.trimmer.released(released)
        return released

    def free_all(self) -> int:
        """Free every request's stores; returns the bytes released."""
        return sum(self.free(rid) for rid in list(self._stores))

    def pool_bytes(self) -> int:
        return sum(s.pool_bytes() for layers in self._stores.values() for s in layers.values())

    def offload_bytes(self) -> int:
        return sum(s.offload_bytes() for layers in self._stores.values() for s in layers.values())

    def total_bytes(self) -> int:
        return self.pool_bytes() + self.offload_bytes()
