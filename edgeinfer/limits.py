"""Bounds for sizes read from untrusted files (config.json, GGUF headers, manifests), checked before any allocation.

A checkpoint or package from a stranger can claim 10^12 layers or a 10^9-token context; trusting it means
allocating until the kernel kills the process. Each bound sits far above any model a device runs today
(the largest open decoders: ~128 layers, hidden 16384, vocabularies of ~262k, contexts of 1M).
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_SIZES: dict[str, int] = {
    "hidden_size": 65536,
    "num_layers": 1024,
    "num_heads": 1024,
    "num_kv_heads": 1024,
    "head_dim": 1024,
    "intermediate_size": 1 << 20,
    "vocab_size": 1 << 22,
    "context_length": 1 << 20,
}


def size_problem(sizes: Mapping[str, object]) -> str | None:
    """What is wrong with the first size in SIZES that is not a whole number within its bound (None: all fine)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{name} is {value!r}, not a whole number >= 1"
        if value > MAX_SIZES[name]:
            return f"{name} is {value}, above the {MAX_SIZES[name]} edgeinfer accepts"
    return None


def spec_sizes(spec) -> dict[str, object]:
    """The sizes of an ArchSpec that decide allocations, keyed as MAX_SIZES names them."""
    return {name: getattr(spec, name) for name in MAX_SIZES if name != "context_length"}
