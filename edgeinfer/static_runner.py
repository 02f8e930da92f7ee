"""Running a static-shape package (qnn): prefill and decode graphs over a host-held KV cache.

The graphs see fixed shapes only (see export/static_graph.py). The host gathers embeddings and rotary rows,
builds the additive mask from the write position, passes each layer's whole cache as past, and copies the
new K/V rows back into the cache at the write position. A prompt chunk shorter than the prefill graph's N
is left-padded, so the logits row is always the last one; a single token runs the decode graph.

The cache has the graphs' I/O type: uint16 in W4A16 packages (one scale and zero point per slot, recorded in
graphs.host.kv_cache, so rows are copied, never requantized), float32 in fp32 ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .architecture import ArchSpec
from .errors import GenerationError, PackageError, check_fits
from .graph_contract import (ATTENTION_MASK, CACHE_KINDS, POSITION_COS, POSITION_SIN, cache_slot, cache_slot_of,
                             rotary_tables)
from .package import Package
from .runner import Engine, Runner


class StaticEngine(Engine):
    """Sessions for every part of both roles; each runner (generator) owns its own cache."""

    def __init__(self, backend, package: Package, options):
        self.backend = backend
        self.manifest = manifest = package.manifest
        self.options = backend.package_options(manifest.precision, options)
        graphs = manifest.graphs
        if "prefill" not in graphs or "decode" not in graphs:
            raise PackageError(f"{package.folder} has no prefill/decode graphs: re-export it with `edgeinfer export --target qnn`")
        self.sessions = {role: [self._session(package, part) for part in graphs[role]["parts"]] for role in ("prefill", "decode")}
        self.embeddings = self.host_embeddings(package)

    def _session(self, package: Package, part: dict):
        file = package.graph(part.get("file"), "a graph part")
        session = self.backend.create_session(str(file), self.options, fingerprint=package.graph_fingerprint(file.name))
        check_cache_types(file, session, self.manifest.kv_cache["dtype"])
        return session

    def new_runner(self) -> "StaticRunner":
        return StaticRunner(self.sessions, self.manifest.graphs, self.manifest.spec, self.manifest.context_length,
                            self.embeddings)

    @staticmethod
    def host_embeddings(package: Package) -> np.ndarray:
        """The host's embedding table, memory-mapped: a plain numeric .npy of [vocab, hidden], never a pickle."""
        spec = package.manifest.spec
        path = package.file(package.manifest.graphs["host"]["embeddings"].get("file"), "the embedding table")
        try:
            table = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise PackageError(f"{path} is not a plain numeric array ({exc}): the package is damaged, re-export it") from None
        if table.dtype not in (np.float16, np.float32) or table.shape != (spec.vocab_size, spec.hidden_size):
            raise PackageError(
                f"{path} holds {table.dtype} {table.shape}, the model needs float {(spec.vocab_size, spec.hidden_size)}: "
                "the package is damaged, re-export it"
            )
        return table


_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint16": "tensor(uint16)"}


def check_cache_types(path: Path, session, dtype: str) -> None:
    """The runner feeds its cache as the manifest's kv_cache dtype: a graph that reads another fails here, in one line,
    not inside onnxruntime at the first token."""
    for value in (*session.get_inputs(), *session.get_outputs()):
        if cache_slot_of(value.name) is not None and value.type != _ORT_TYPES.get(dtype):
            raise PackageError(f"{path}: {value.name} is {value.type}, the manifest's kv_cache says {dtype}: "
                               "the package is damaged, re-export it")


class StaticRunner(Runner):
    """Owns one KV cache; `forward` feeds tokens at a position and returns the last token's logits."""

    def __init__(self, sessions: dict, graphs: dict, spec: ArchSpec, context: int, embeddings: np.ndarray):
        self.sessions = sessions
        self.graphs = graphs
        self.spec = spec
        self.capacity = context
        self.prefill_chunk = graphs["prefill"]["tokens"]  # the generator feeds prompts in chunks of this size
        self.embeddings = embeddings
        self.mask_value = float(graphs["host"]["attention_mask"]["value"])
        self.vocab_size = spec.vocab_size
        shape = (1, spec.num_kv_heads, context, spec.head_dim)
        # Slots a runner never wrote (Generator.assume_filled) hold zeros, not garbage: in a quantized cache
        # (graphs.host.kv_cache, the graphs' own uint16 I/O) that is each slot's zero point.
        encoding = graphs["host"].get("kv_cache")  # absent: float32 I/O (fp32 packages, the exporter's calibration)
        slots = [cache_slot(i, kind) for i in range(spec.num_layers) for kind in CACHE_KINDS]
        if encoding is None:
            self.cache = {slot: np.zeros(shape, dtype=np.float32) for slot in slots}
        else:
            dtype = np.dtype(encoding["dtype"])
            self.cache = {slot: np.full(shape, encoding["zero_point"][slot], dtype=dtype) for slot in slots}
        self.cos, self.sin = rotary_tables(spec.head_dim, spec.rope_theta, context)

    def cache_arrays(self) -> list[np.ndarray]:
        return [self.cache[cache_slot(i, kind)] for i in range(self.spec.num_layers) for kind in CACHE_KINDS]

    def run(self, token_ids, position: int) -> None:
        """Run TOKEN_IDS placed at POSITION..: one token through the decode graph, more in prefill chunks."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        check_fits(position + ids.size, self.capacity)
        if ids.size == 1:
            self._logits = self._run("decode", ids, position)
            return
        for start in range(0, ids.size, self.prefill_chunk):
            self._logits = self._run("prefill", ids[start : start + self.prefill_chunk], position + start)

    def last_logits(self, all_rows: bool = False) -> np.ndarray:
        if all_rows:
            raise GenerationError("static (qnn) packages return the last position's logits only: use a cpu package for all rows")
        return self._logits

    def _run(self, role: str, ids: np.ndarray, position: int) -> np.ndarray:
        n = self.graphs[role]["tokens"]
        real, pad = ids.size, n - ids.size
        hidden = np.zeros((1, n, self.spec.hidden_size), dtype=np.float32)
        hidden[0, pad:] = self.embeddings[ids]
        rows = np.concatenate([np.full(pad, position, dtype=np.int64), np.arange(position, position + real)])
        cos, sin = self.cos[rows][None, None], self.sin[rows][None, None]
        mask = self._mask(n, pad, position)
        for k, (session, part) in enumerate(zip(self.sessions[role], self.graphs[role]["parts"])):
            # The hidden state comes first in and out (graph_contract.static_io); the rest go by name.
            feed = {part["inputs"][0]: hidden, POSITION_COS: cos, POSITION_SIN: sin, ATTENTION_MASK: mask}
            for name in part["inputs"]:
                if name.startswith("past_"):
                    feed[name] = self.cache[name.removeprefix("past_")]
            outputs = dict(zip(part["outputs"], session.run(part["outputs"], feed)))
            for name, new in outputs.items():
                if name.startswith("new_"):
                    self.cache[name.removeprefix("new_")][:, :, position : position + real] = new[:, :, pad:]
            hidden = outputs[part["outputs"][0]]
        return hidden[0, -1].astype(np.float32, copy=False)

    def _mask(self, n: int, pad: int, position: int) -> np.ndarray:
        """[1,1,N,C+N]: real rows see the cache below POSITION and the new rows up to themselves; a padding
        row sees only itself (its output is discarded; this keeps its softmax well defined)."""
        c = self.capacity
        mask = np.full((1, 1, n, c + n), self.mask_value, dtype=np.float32)
        mask[0, 0, pad:, :position] = 0.0
        new = np.tril(np.ones((n, n), dtype=bool))
        new[:, :pad] = False  # padding columns
        new[np.arange(pad), np.arange(pad)] = True
        mask[0, 0][:, c:][new] = 0.0
        return mask
