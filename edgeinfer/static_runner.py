"""Running a static-shape package (qnn): prefill and decode graphs over a host-held KV cache.

The graphs see fixed shapes only (see export/static_graph.py). The host gathers embeddings and rotary rows,
builds the additive mask from the write position, passes each layer's whole cache as past, and copies the
new K/V rows back into the cache at the write position. A prompt chunk shorter than the prefill graph's N
is left-padded, so the logits row is always the last one; a single token runs the decode graph.

The cache has the graphs' I/O type: uint16 in W4A16 packages (one scale and zero point per slot, recorded in
graphs.host.kv_cache, so rows are copied, never requantized), float32 in fp32 ones.

Fixed shapes let every input and output live in one buffer for the runner's life (CacheBuffers): each is bound
once to an IOBinding per part, the host writes inputs and copies new rows in place, and a step allocates and
converts nothing. Where the backend offers memory its device reads in place (Backend.shared_memory: the QNN HTP's
rpcmem) the buffers live there; otherwise in plain host memory, which an NPU copies in and out each run.
Sessions that are not onnxruntime's (the exporter's calibration, verify's taps) are fed numpy arrays instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .architecture import ArchSpec
from .errors import BackendError, GenerationError, PackageError, check_fits
from .graph_contract import (ATTENTION_MASK, CACHE_KINDS, EMBEDS_IN, HIDDEN_IN, HIDDEN_OUT, POSITION_COS, POSITION_SIN,
                             cache_slot, cache_slot_of, rotary_tables, static_shapes)
from .package import Package, static_contexts
from .runner import Engine, Runner


class StaticEngine(Engine):
    """The package's sessions, per context it has graphs for (graphs.contexts), opened when a runner first needs
    them; each runner (generator) owns its own cache."""

    def __init__(self, backend, package: Package, options):
        self.backend = backend
        self.package = package
        self.manifest = manifest = package.manifest
        self.options = backend.package_options(manifest.precision, options)
        graphs = manifest.graphs
        if "prefill" not in graphs or "decode" not in graphs:
            raise PackageError(f"{package.folder} has no prefill/decode graphs: re-export it with `edgeinfer export --target qnn`")
        self.contexts = static_contexts(manifest)
        self._sessions: dict[int, dict[str, list]] = {}
        self.embeddings = self.host_embeddings(package)
        self.sessions_for(self.contexts[0])  # a package that cannot load fails here, not at the first token

    def sessions_for(self, context: int) -> dict[str, list]:
        """Every part's session of both roles for CONTEXT (one of self.contexts)."""
        if context not in self._sessions:
            def file(part: dict) -> str | None:
                return part.get("file") if context == self.manifest.context_length else part.get("contexts", {}).get(str(context))

            graphs = self.manifest.graphs
            self._sessions[context] = {role: [self._session(file(part)) for part in graphs[role]["parts"]] for role in ROLES}
        return self._sessions[context]

    def open_all(self) -> None:
        for context in self.contexts:
            self.sessions_for(context)

    def _session(self, name: str | None):
        file = self.package.graph(name, "a graph part")
        session = self.backend.create_session(str(file), self.options, fingerprint=self.package.graph_fingerprint(file.name))
        check_cache_types(file, session, self.manifest.kv_cache["dtype"])
        return session

    def new_runner(self) -> Runner:
        if len(self.contexts) == 1:
            return self.runner_for(self.contexts[0])
        return GrowingRunner(self.runner_for, self.contexts)

    def runner_for(self, context: int) -> "StaticRunner":
        """A runner over CONTEXT cache slots, its inputs and outputs bound in place where the backend reads them there."""
        m, sessions = self.manifest, self.sessions_for(context)
        buffers = None
        if self.backend.reads_bound_inputs_in_place():
            buffers = CacheBuffers(sessions, m.graphs, m.spec, context, self.backend.shared_memory())
        runner = StaticRunner(sessions, m.graphs, m.spec, context, self.embeddings, buffers)
        runner.verifies_exactly = verifies_exactly(m)
        return runner

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


ROLES = ("prefill", "decode")


def verifies_exactly(manifest) -> bool:
    """Whether a verify run (the prefill graph) picks the tokens decode steps would: float activations, or quantized
    ones on one grid per tensor for both roles (ExportOptions.shared_role_ranges)."""
    quantized = manifest.target == "qnn" and manifest.precision == "w4a16"
    return not quantized or manifest.export_options.get("shared_role_ranges") is True


def logits_rows(graphs: dict) -> int:
    """How many of the prefill graph's last rows return logits (1 in packages exported before verification)."""
    rows = graphs["prefill"].get("logits_rows", 1)
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= graphs["prefill"]["tokens"]:
        raise PackageError(f"the manifest's prefill logits_rows {rows!r} is not a row count of its graph: re-export the package")
    return rows
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint16": "tensor(uint16)"}


def check_cache_types(path: Path, session, dtype: str) -> None:
    """The runner feeds its cache as the manifest's kv_cache dtype: a graph that reads another fails here, in one line,
    not inside onnxruntime at the first token."""
    for value in (*session.get_inputs(), *session.get_outputs()):
        if cache_slot_of(value.name) is not None and value.type != _ORT_TYPES.get(dtype):
            raise PackageError(f"{path}: {value.name} is {value.type}, the manifest's kv_cache says {dtype}: "
                               "the package is damaged, re-export it")


class CacheBuffers:
    """Every input and output of a runner's graphs, allocated once and bound once to one IOBinding per part.

    The cache slots [1, KVH, C, D] serve both roles. Per role: the first part's hidden state in, the rotary rows and
    mask (read by every part), each part's hidden state out (bound again as the next part's in), each slot's new
    rows, the logits. Each buffer is an OrtValue and a numpy view over the same memory (`views`, `cache`).

    MEMORY: where to allocate (Backend.shared_memory); None: plain host memory.
    """

    def __init__(self, sessions: dict, graphs: dict, spec: ArchSpec, context: int,
                 memory: ort.OrtMemoryInfo | None = None):
        self.memory = memory
        self.values: dict[tuple, ort.OrtValue] = {}  # kept alive: the views and bindings point into them
        self.cache: dict[str, np.ndarray] = {}
        self.views: dict[str, dict[str, np.ndarray]] = {role: {} for role in ROLES}  # a role's inputs and outputs
        self.bindings: dict[str, list[ort.IOBinding]] = {role: [] for role in ROLES}
        for role in ROLES:
            shapes = static_shapes(graphs, spec, context, role)
            for k, (session, part) in enumerate(zip(sessions[role], graphs[role]["parts"])):
                binding = session.io_binding()
                for name in part["inputs"]:
                    slot = cache_slot_of(name)
                    # A part's hidden state in is the buffer the part before it wrote.
                    key = ("cache", slot) if slot else (role, HIDDEN_OUT, k - 1) if name == HIDDEN_IN else (role, name)
                    binding.bind_ortvalue_input(name, self._buffer(key, *shapes[name]))
                for name in part["outputs"]:
                    key = (role, HIDDEN_OUT, k) if name == HIDDEN_OUT else (role, name)
                    binding.bind_ortvalue_output(name, self._buffer(key, *shapes[name]))
                self.bindings[role].append(binding)
        for key, value in self.values.items():
            view = value.numpy()
            if view.ctypes.data != value.data_ptr():  # writes would land in a copy, not where the graph reads
                raise BackendError(f"{memory.name if memory else 'host'} memory cannot be viewed in place by numpy: "
                                   "pass provider option enable_htp_shared_memory_allocator=0")
            if key[0] == "cache":
                self.cache[key[1]] = view
            elif len(key) == 2:
                self.views[key[0]][key[1]] = view

    def _buffer(self, key: tuple, shape: tuple[int, ...], dtype: str) -> ort.OrtValue:
        if key not in self.values:
            where = {} if self.memory is None else {"memory_info": self.memory}
            self.values[key] = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype).type, **where)
        return self.values[key]


class StaticRunner(Runner):
    """Owns one KV cache; `forward` feeds tokens at a position and returns the last token's logits.

    BUFFERS: the cache and every input and output bound in place over SESSIONS (StaticEngine's runners); None:
    numpy arrays fed to `session.run(outputs, feed)` each step, for any session object that has it."""

    def __init__(self, sessions: dict, graphs: dict, spec: ArchSpec, context: int, embeddings: np.ndarray,
                 buffers: CacheBuffers | None = None):
        self.sessions = sessions
        self.graphs = graphs
        self.spec = spec
        self.capacity = context
        self.prefill_chunk = graphs["prefill"]["tokens"]  # the generator feeds prompts in chunks of this size
        # The prefill graph's logits cover its last logits_rows rows: a verify run of up to that many tokens is one
        # prefill run (left-padded). Packages exported before it return the last row only.
        self.verify_rows = logits_rows(graphs)
        self.embeddings = embeddings
        self.mask_value = float(graphs["host"]["attention_mask"]["value"])
        self.vocab_size = spec.vocab_size
        self.buffers = buffers
        self.shapes = {role: static_shapes(graphs, spec, context, role) for role in ROLES}
        # Slots a runner never wrote (Generator.assume_filled) hold zeros, not garbage: in a quantized cache
        # (graphs.host.kv_cache, the graphs' own uint16 I/O) that is each slot's zero point.
        encoding = graphs["host"].get("kv_cache")  # absent: float32 I/O (fp32 packages, the exporter's calibration)
        slots = [cache_slot(i, kind) for i in range(spec.num_layers) for kind in CACHE_KINDS]
        shape, dtype = self.shapes["decode"][f"past_{slots[0]}"]
        self.cache = buffers.cache if buffers is not None else {slot: np.empty(shape, dtype) for slot in slots}
        for slot in slots:
            self.cache[slot][...] = 0 if encoding is None else encoding["zero_point"][slot]
        self.cos, self.sin = rotary_tables(spec, context)  # [ropes, C, pairs]
        self.windows = spec.windows()  # one mask per window (None: full attention)

    def cache_arrays(self) -> list[np.ndarray]:
        return [self.cache[cache_slot(i, kind)] for i in range(self.spec.num_layers) for kind in CACHE_KINDS]

    def run(self, token_ids, position: int, rows: int = 1) -> None:
        """Run TOKEN_IDS placed at POSITION..: one token through the decode graph, more in prefill chunks; ROWS > 1
        (verification) runs them all in one prefill run."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        check_fits(position + ids.size, self.capacity)
        if rows > 1 and not rows <= ids.size <= min(self.verify_rows, self.prefill_chunk):
            raise GenerationError(f"cannot return logits for {rows} of {ids.size} tokens: this package's prefill graph "
                                  f"returns {self.verify_rows} row(s); re-export it to verify proposed tokens")
        if ids.size == 1:
            self._logits = self._run("decode", ids, position, 1)
            return
        for start in range(0, ids.size, self.prefill_chunk):
            self._logits = self._run("prefill", ids[start : start + self.prefill_chunk], position + start, rows)

    def last_logits(self, all_rows: bool = False) -> np.ndarray:
        """The last token's logits (the last run's ROWS with ALL_ROWS); with buffers, views of the logits buffer that
        the next run overwrites."""
        return self._logits if all_rows else self._logits[-1]

    def _run(self, role: str, ids: np.ndarray, position: int, rows: int) -> np.ndarray:
        n = self.graphs[role]["tokens"]
        real, pad = ids.size, n - ids.size
        bound = self.buffers is not None
        io = self.buffers.views[role] if bound else {name: np.empty(*self.shapes[role][name])
                                                    for name in (EMBEDS_IN, POSITION_COS, POSITION_SIN, ATTENTION_MASK)}
        io[EMBEDS_IN][0, :pad] = 0.0
        io[EMBEDS_IN][0, pad:] = self.embeddings[ids]
        positions = np.concatenate([np.full(pad, position, dtype=np.int64), np.arange(position, position + real)])
        np.take(self.cos, positions, axis=1, out=io[POSITION_COS][0], mode="clip")
        np.take(self.sin, positions, axis=1, out=io[POSITION_SIN][0], mode="clip")
        for mask, window in zip(io[ATTENTION_MASK][0], self.windows):
            self._mask(mask, pad, position, window)
        if bound:
            for session, binding in zip(self.sessions[role], self.buffers.bindings[role]):
                session.run_with_iobinding(binding)
        else:
            io = self._feed(role, io)
        for slot, cache in self.cache.items():
            cache[:, :, position : position + real] = io[f"new_{slot}"][:, :, pad:]
        last = self.graphs[role]["parts"][-1]["outputs"][0]  # the hidden state comes first in and out (static_io)
        return io[last][0, -rows:].astype(np.float32, copy=False)  # left-padded: the real rows are the last ones

    def _feed(self, role: str, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each part through `session.run`; returns IO with every part's outputs."""
        hidden = io[EMBEDS_IN]
        for session, part in zip(self.sessions[role], self.graphs[role]["parts"]):
            feed = {name: self.cache[cache_slot_of(name)] if cache_slot_of(name) else io[name] for name in part["inputs"][1:]}
            feed[part["inputs"][0]] = hidden  # the hidden state comes first in and out (static_io)
            io.update(zip(part["outputs"], session.run(part["outputs"], feed)))
            hidden = io[part["outputs"][0]]
        return io

    def _mask(self, mask: np.ndarray, pad: int, position: int, window: int | None = None) -> None:
        """MASK [N, C+N], in place: real rows see the cache below POSITION and the new rows up to themselves, within
        the last WINDOW tokens (themselves included) where the layers slide; a padding row sees only itself (its output
        is discarded; this keeps its softmax well defined). Cache slot j holds position j."""
        c, n = self.capacity, mask.shape[0]
        mask[...] = self.mask_value
        mask[pad:, :position] = 0.0
        new = np.tril(np.ones((n, n), dtype=bool))
        if window is not None:
            rows = position + np.arange(n - pad)  # the real rows' positions
            mask[pad:, :position][np.arange(position)[None, :] <= rows[:, None] - window] = self.mask_value
            new &= ~np.tril(np.ones((n, n), dtype=bool), -window)  # new rows further back than the window
        new[:, :pad] = False  # padding columns
        new[np.arange(pad), np.arange(pad)] = True
        mask[:, c:][new] = 0.0


class GrowingRunner(Runner):
    """A conversation that starts in the package's smallest context and moves up through graphs.contexts as it
    grows: a short chat's decode step reads 512 cache slots, not 4096 (the attention and the cache it moves scale
    with the slots). Moving up copies the filled rows into the larger context's cache, once per context."""

    def __init__(self, runner_for: Callable[[int], StaticRunner], contexts: list[int]):
        self.runner_for = runner_for
        self.contexts = contexts
        self.capacity = contexts[-1]
        self.inner = runner_for(contexts[0])
        self.prefill_chunk = self.inner.prefill_chunk
        self.verify_rows = self.inner.verify_rows

    @property
    def context(self) -> int:
        """The cache slots the current graphs attend over."""
        return self.inner.capacity

    def run(self, token_ids, position: int, rows: int = 1) -> None:
        needed = position + np.asarray(token_ids).size
        if needed > self.inner.capacity:
            check_fits(needed, self.capacity)
            larger = self.runner_for(next(c for c in self.contexts if c >= needed))
            for old, new in zip(self.inner.cache_arrays(), larger.cache_arrays()):
                new[:, :, :position] = old[:, :, :position]
            self.inner = larger
        self.inner.run(token_ids, position, rows)

    def last_logits(self, all_rows: bool = False) -> np.ndarray:
        return self.inner.last_logits(all_rows)

    def cache_arrays(self) -> list[np.ndarray]:
        return self.inner.cache_arrays()
