"""Idle generators kept after their requests, found again by the tokens their caches hold.

A chat's next turn sends the whole conversation again; its prompt begins with the tokens of the turns before,
which the previous request's KV cache already holds. The request that shares the longest start with a kept
cache takes it over (`Generator.keep_common_prefix` rewinds it to what they share) and runs only the rest.
Memory is bounded: kept caches add up to at most BUDGET bytes, the least recently used going first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..generator import Generator, reusable_prefix

# Below this many shared tokens, taking a kept cache costs its owner more than it saves the taker (a chat
# template's opening is a few tokens; a system prompt is dozens).
MIN_SHARED_TOKENS = 16


@dataclass
class KeptCache:
    generator: Generator
    footprint: int = 0  # cache slots whose memory is in use: the most tokens it held (host pages stay touched)


class PrefixCache:
    def __init__(self, budget_bytes: int, bytes_per_token: int, capacity: int, host_memory: bool,
                 on_drop: Callable[[Generator], None] = lambda generator: None):
        self.budget_bytes, self.bytes_per_token = budget_bytes, bytes_per_token
        self._on_drop = on_drop  # a generator the cache lets go of (Model.recycle: a GPU reuses its buffers)
        # A device cache is allocated whole; a host one is calloc'd and grows as tokens fill it.
        self.capacity, self.host_memory = capacity, host_memory
        self._kept: OrderedDict[int, KeptCache] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # worker threads take and put
        self.hits = self.misses = self.evictions = 0

    def cost(self, kept: KeptCache) -> int:
        return (kept.footprint if self.host_memory else self.capacity) * self.bytes_per_token

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, prompt: list[int]) -> KeptCache | None:
        """The kept cache sharing the longest start with PROMPT (now the caller's), or None when none shares enough."""
        with self._lock:
            best, best_shared = None, 0
            for key, kept in self._kept.items():  # the most recent wins a tie: it comes last
                shared = reusable_prefix(kept.generator.tokens, prompt)
                if shared and shared >= best_shared:
                    best, best_shared = key, shared
            if best is None or best_shared < min(MIN_SHARED_TOKENS, len(prompt) - 1):
                self.misses += 1
                return None
            self.hits += 1
            return self._kept.pop(best)

    def put(self, kept: KeptCache) -> None:
        """Keep KEPT for later requests, dropping caches it makes useless and the oldest ones beyond the budget."""
        kept.footprint = max(kept.footprint, kept.generator.position)
        tokens = kept.generator.tokens
        dropped = []
        with self._lock:
            for key, other in list(self._kept.items()):
                held = other.generator.tokens
                if len(held) <= len(tokens) and held == tokens[: len(held)]:
                    dropped.append(self._kept.pop(key))  # every prompt shares at least as much with KEPT
                elif len(tokens) < len(held) and tokens == held[: len(tokens)]:
                    dropped.append(kept)  # the other one already serves every prompt KEPT would
                    break
            else:
                self._kept[id(kept)] = kept
            while self._kept and sum(self.cost(k) for k in self._kept.values()) > self.budget_bytes:
                dropped.append(self._kept.popitem(last=False)[1])
                self.evictions += 1
        for gone in dropped:
            self._on_drop(gone.generator)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._kept), "bytes": sum(self.cost(k) for k in self._kept.values()),
                    "budget_bytes": self.budget_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}


def kv_bytes_per_token(manifest) -> int:
    """Bytes one token occupies in a KV cache: keys and values of every layer's kv heads."""
    kv = manifest.kv_cache
    return 2 * kv["num_layers"] * kv["num_kv_heads"] * kv["head_dim"] * np.dtype(kv["dtype"]).itemsize
