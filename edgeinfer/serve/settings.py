"""The server's settings, as `edgeinfer serve` passes them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    model_id: str  # what /v1/models lists and responses name
    host: str = "127.0.0.1"  # loopback: other machines reach it only when asked (--host 0.0.0.0)
    port: int = 8080
    parallel: int = 4  # requests generating at once, each with its own KV cache
    queue: int = 16  # requests waiting for a slot; beyond them, 503
    api_key: str | None = None  # every route but /health then needs `Authorization: Bearer KEY`
    read_timeout_s: float = 30.0  # for a request's headers, and again for its body (slow clients get a 408)
    shutdown_timeout_s: float = 10.0  # Ctrl-C / SIGTERM: running requests get this long to finish, then are cancelled
    max_body_bytes: int = 8 << 20
    cache_bytes: int = 1 << 30  # kept KV caches for prompt-prefix reuse (0: off)
