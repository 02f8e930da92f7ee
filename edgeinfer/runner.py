"""The interface between the generator and a package's graphs: a runner owns one KV cache and runs tokens.

Two implementations: DynamicRunner (dynamic_runner.py: cpu, cuda) and StaticRunner (static_runner.py: qnn).
An Engine holds a loaded package's sessions and makes runners; a Generator drives one runner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Runner(ABC):
    capacity: int  # cache slots: the most tokens a conversation holds
    # Tokens per prefill run this runner wants (a static graph's N, a GPU's whole prompt); None: the generator's own.
    prefill_chunk: int | None = None
    # The most rows of logits one run returns (`run`'s ROWS): k+1 verifies k proposed tokens; 1: no verification.
    verify_rows: int = 1
    # Whether a verify run picks exactly what decode steps would (False: a quantized static package with a grid per
    # role, ExportOptions.shared_role_ranges); speculation needs it.
    verifies_exactly: bool = True
    # Where verify runs are fastest at one width (a GPU's captured graph): proposals are padded to it; None: any.
    verify_width: int | None = None

    @abstractmethod
    def run(self, token_ids: np.ndarray, position: int, rows: int = 1) -> None:
        """Run TOKEN_IDS placed at POSITION..; the results (logits of the last ROWS tokens) stay with the runner until
        asked for."""

    @abstractmethod
    def last_logits(self, all_rows: bool = False) -> np.ndarray:
        """float32 logits of the last run's last token (every row the run returned with ALL_ROWS). On the host this
        may be a view of the runner's bound logits buffer, which the next run overwrites: copy to keep it."""

    def greedy_token(self) -> int | None:
        """The last row's argmax where the graph computes it (one id crosses to the host); None: read the logits."""
        return None

    def greedy_tokens(self) -> np.ndarray | None:
        """The argmax of every row the last run returned, where the graph computes it; None: read the logits."""
        return None

    def candidates(self, temperature: float) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The most likely next tokens picked where the logits live (see candidates.py); None: read the logits."""
        return None

    @abstractmethod
    def cache_arrays(self) -> list[np.ndarray]:
        """The cache buffers as host arrays (host caches only): for tests and inspection."""

    def touch_cache(self) -> None:
        """Speed tests: write every page of a host cache, as a long prefill would. Pages never written all map one
        shared zero page, which stays in the CPU's caches and makes decode at a deep context look fast."""
        for cache in self.cache_arrays():
            cache.fill(0.01)

    def forward(self, token_ids, position: int, all_rows: bool = False) -> np.ndarray:
        """run + last_logits in one call."""
        self.run(token_ids, position)
        return self.last_logits(all_rows)


class Engine(ABC):
    """A loaded package's sessions on one backend; each runner it makes owns its own cache."""

    @abstractmethod
    def new_runner(self) -> Runner:
        ...

    def open_all(self) -> None:
        """Open every session the package has now (`export --compile`: every QNN context binary on the host);
        engines that open all of them at load have nothing left to do."""
