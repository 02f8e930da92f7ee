"""Running a dynamic-shape package (cpu, cuda) with its KV cache kept in place.

Each layer's past and present are bound to the same preallocated buffer of the package's context length,
so GroupQueryAttention appends the new keys/values in place: no per-token copy of the cache, and a step's
cost grows only with attention over the filled part.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .errors import GenerationError
from .package import Manifest

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


class DynamicRunner:
    """Owns one KV cache; `forward` feeds tokens at the current position and returns the last logits row."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str = "cpu", device_id: int = 0):
        self.session = session
        self.manifest = manifest
        self.capacity = manifest.context_length
        self.all_logits = bool(manifest.export_options.get("all_logits"))
        graph = manifest.graphs["decoder"]
        kv = manifest.kv_cache
        dtype = _NP_DTYPES[kv["dtype"]]
        shape = [1, kv["num_kv_heads"], kv["length"], kv["head_dim"]]
        self.binding = session.io_binding()
        self._cache = []
        self._host_arrays = []  # keep host buffers alive: their OrtValues wrap this memory without copying
        for past, present in zip(graph["inputs"][3:], graph["outputs"][1:]):
            # Zeroed (calloc'd on the host: pages are touched only as the cache fills).
            zeros = np.zeros(shape, dtype=dtype)
            buffer = ort.OrtValue.ortvalue_from_numpy(zeros, device, device_id)
            if device == "cpu":
                self._host_arrays.append(zeros)
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)
            self._cache.append(buffer)
        self.vocab_size = manifest.architecture["vocab_size"]
        self.logits_dtype = np.dtype(manifest.activation_dtype)
        self._logits = self._bind_logits(1)  # last position only: one buffer for every run
        self.run_options = ort.RunOptions()

    @property
    def cache_bytes(self) -> int:
        kv = self.manifest.kv_cache
        return 2 * kv["num_layers"] * kv["num_kv_heads"] * kv["length"] * kv["head_dim"] * np.dtype(kv["dtype"]).itemsize

    def forward(self, token_ids: np.ndarray, position: int, all_rows: bool = False) -> np.ndarray:
        """Run TOKEN_IDS placed at POSITION..; returns float32 logits of the last one (every one with ALL_ROWS,
        for packages exported with all_logits)."""
        total = position + len(token_ids)
        if total > self.capacity:
            raise GenerationError(f"context is full ({self.capacity} tokens): start a new conversation or export with a larger --context")
        b = self.binding
        b.bind_cpu_input("input_ids", np.asarray(token_ids, dtype=np.int64).reshape(1, -1))
        b.bind_cpu_input("seqlens_k", np.array([total - 1], dtype=np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(total, dtype=np.int32))
        if self.all_logits:
            self._logits = self._bind_logits(len(token_ids))  # one row per token: the shape follows the chunk
        self.session.run_with_iobinding(b, self.run_options)
        if all_rows:
            return self._logits[0].astype(np.float32)
        return self._logits[0, -1].astype(np.float32, copy=False)

    def _bind_logits(self, rows: int) -> np.ndarray:
        logits = np.empty((1, rows, self.vocab_size), dtype=self.logits_dtype)
        self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        return logits

    def cache_arrays(self) -> list[np.ndarray]:
        """The cache buffers as numpy views (host caches only): for tests and inspection."""
        return [v.numpy() for v in self._cache]
