"""Running a dynamic-shape package (cpu, cuda) with its KV cache kept in place.

Each layer's past and present are bound to the same preallocated buffer of the package's context length,
so the new keys/values land in place: no per-token copy of the cache, and a step's cost grows only with attention
over the filled part. BNSH caches (GroupQueryAttention) are bound whole, once; SH caches (grouped attention, cpu)
are rows, bound at each run as two views: the rows held (past) and the rows this run writes (present).

On a GPU the cache, the logits and the greedy token stay in device memory; a decode step updates two small
device buffers in place (the token id and the cache length) and reads back one token id (greedy), the few most
likely tokens (sampling, see candidates.py), or the last logits row when the sampler needs all of it. Fixed
addresses and shapes let onnxruntime capture the decode step once as a CUDA graph and replay it: one launch per
token instead of several hundred. Prefill has a new shape each time and runs without a graph.

Speculative decoding verifies k proposed tokens in one run that returns logits (and, on a GPU, the argmax) for its
last k+1 rows only (the graph's logits_start input). On a GPU a verify run of the runner's fixed width (VERIFY_WIDTH
tokens, proposals padded) has its own fixed buffers and CUDA graph, as the decode step has.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .errors import GenerationError, PackageError, check_fits
from .graph_contract import (GREEDY_OUTPUT, INPUT_IDS, LOGITS, LOGITS_ROWS, LOGITS_START, SEQLENS, TOTAL_LENGTH, cache_pairs,
                             cache_rows)
from .package import Manifest, Package
from .runner import Engine, Runner

if TYPE_CHECKING:
    from .backends import Backend, BackendOptions
    from .candidates import CandidateHead

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}
NO_GRAPH = -1  # onnxruntime's gpu_graph_id for a run that neither captures nor replays a graph
# Tokens of a GPU verify run (the pending token and up to 7 proposals): one fixed shape, so one captured graph.
VERIFY_WIDTH = 8
KEPT_ROWS = 64  # logits buffers of up to this many rows are kept per row count


@dataclass(frozen=True)
class BindingPlan:
    """Where one runner's inputs and outputs live, decided from the manifest and the device alone."""

    device: str  # "cpu" or "cuda": where the cache, the logits and the greedy token live
    cache: tuple[tuple[str, str], ...]  # (past input, present output) pairs, each bound to one buffer
    cache_shape: tuple[int, ...]  # BNSH: [batch 1, kv heads, context length, head dim]; SH: [context length, kv heads * head dim]
    cache_dtype: str
    # "BNSH": past and present are the whole buffer (GroupQueryAttention appends in place); "SH": past is the rows
    # held, present the rows this run adds, both bound as views of the buffer at each run (grouped_attention.py)
    cache_layout: str
    all_logits: bool  # packages exported with all_logits return one logits row per fed token
    greedy_output: str | None  # output with the argmax of each row, when the graph has one (cuda packages)
    fixed_decode_inputs: bool  # decode reads input_ids and seqlens_k from buffers updated in place
    decode_total_length: int | None  # total_sequence_length of every decode step (fixed: a graph bakes it)
    graph_capture: bool  # the session captures CUDA graphs: every run must name its graph id
    decode_graph_id: int | None  # the decode step's graph (None: decode runs without one)
    # The graph's input that picks the last k rows for logits (verification): logits_start (-k), or on cpu packages of
    # 2026-12-01 logits_rows (k); None: the last row only
    rows_input: str | None = None
    verify_width: int | None = None  # tokens of every fixed-input verify run (None: verify runs as prefill does)
    verify_graph_id: int | None = None  # the fixed verify run's graph

    def run_config(self, decode: bool, verify: bool = False) -> dict[str, str]:
        """Run-option entries for a prefill, decode or fixed-width verify run."""
        if not self.graph_capture:
            return {}
        graph = self.decode_graph_id if decode else self.verify_graph_id if verify else None
        return {"gpu_graph_id": str(NO_GRAPH if graph is None else graph)}


def binding_plan(manifest: Manifest, device: str = "cpu", graph_id: int | None = None,
                 fixed_decode_inputs: bool | None = None) -> BindingPlan:
    """The plan for DEVICE. GRAPH_ID: the session captures CUDA graphs and this runner's decode step owns
    graph GRAPH_ID (>= 1; onnxruntime reserves 0) and its verify run graph GRAPH_ID + 1. FIXED_DECODE_INPUTS defaults
    to on for GPUs."""
    graph = manifest.graphs["decoder"]
    inputs, outputs = set(graph["inputs"]), set(graph["outputs"])
    pairs = cache_pairs(manifest.kv_cache["num_layers"])
    for past, present in pairs:
        if past not in inputs or present not in outputs:
            raise PackageError(f"the decoder lacks the cache input {past} or output {present}: re-export the package")
    kv = manifest.kv_cache
    on_device = device != "cpu"
    if graph_id is not None and (not on_device or graph_id < 1):
        raise GenerationError(f"CUDA graph id {graph_id} needs a GPU device and a value >= 1 (0 is onnxruntime's own)")
    all_logits = bool(manifest.export_options.get("all_logits"))
    fixed = on_device if fixed_decode_inputs is None else fixed_decode_inputs
    fixed = fixed and not all_logits  # a graph needs fixed output shapes: all_logits packages always run as prefill
    layout = kv.get("layout", "BNSH")
    if layout == "SH" and on_device:
        raise GenerationError(f"this package's cache layout SH runs on the cpu only: run it with --device cpu, or "
                              f"re-export it for {device} (--target cuda)")
    rows = cache_rows(kv)
    shape = ((rows, kv["num_kv_heads"] * kv["head_dim"]) if layout == "SH"
             else (1, kv["num_kv_heads"], rows, kv["head_dim"]))
    rows_input = next((name for name in (LOGITS_START, LOGITS_ROWS) if name in inputs), None)
    rows = rows_input is not None
    return BindingPlan(
        device=device,
        cache=tuple(pairs),
        cache_shape=shape,
        cache_dtype=kv["dtype"],
        cache_layout=layout,
        all_logits=all_logits,
        greedy_output=GREEDY_OUTPUT if GREEDY_OUTPUT in outputs else None,
        fixed_decode_inputs=fixed,
        # GQA reads each row's real length from seqlens_k; total_sequence_length only bounds it, so the
        # capacity serves every step (onnxruntime-genai feeds its max length the same way under graphs).
        decode_total_length=manifest.context_length if fixed else None,
        graph_capture=graph_id is not None,
        decode_graph_id=graph_id if fixed else None,
        rows_input=rows_input,
        verify_width=VERIFY_WIDTH if fixed and rows else None,
        verify_graph_id=graph_id + 1 if fixed and rows and graph_id is not None else None,
    )


class DynamicRunner(Runner):
    """Owns one KV cache; `forward` feeds tokens at the current position and returns the last logits row.

    `run` + `last_logits` / `greedy_token` split the same work so that a GPU runner copies to the host
    only what the sampler reads.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str = "cpu", device_id: int = 0,
                 plan: BindingPlan | None = None, run_lock: threading.Lock | None = None, head: CandidateHead | None = None):
        self.session = session
        self.manifest = manifest
        self.plan = plan or binding_plan(manifest, device)
        self.device, self.device_id = self.plan.device, device_id
        self.capacity = manifest.context_length
        self.all_logits = self.plan.all_logits
        # The most rows one run returns logits for: what a speculative verify run may ask (1: the package predates it).
        self.verify_rows = self.capacity if self.plan.rows_input or self.all_logits else 1
        self.verify_width = self.plan.verify_width
        self.vocab_size = manifest.architecture["vocab_size"]
        self.logits_dtype = np.dtype(manifest.activation_dtype)
        # A GPU prefills a whole prompt at once (one pass over the weights); None: the generator's default.
        self.prefill_chunk = self.capacity if self.device != "cpu" else None
        # The most likely tokens, where a head runs beside the logits (one row of them: not all_logits packages).
        self.head = head if not self.plan.all_logits else None
        self._head_binding = None
        # Runs that replay CUDA graphs share the session's scratch memory: one at a time.
        self._lock = run_lock if run_lock is not None else contextlib.nullcontext()
        self._host_arrays: dict[str, np.ndarray] = {}  # host buffers stay alive: their OrtValues wrap this memory

        dtype = _NP_DTYPES[self.plan.cache_dtype]
        self._cache = [self._buffer(past, lazy_zeros(self.plan.cache_shape, dtype)) for past, _ in self.plan.cache]
        self.binding = session.io_binding()  # prefill, and every run on the CPU path
        self._decode = session.io_binding() if self.plan.fixed_decode_inputs else None
        self._row_cache = self.plan.cache_layout == "SH"
        if self._row_cache:
            self._row_bytes = self.plan.cache_shape[1] * np.dtype(dtype).itemsize
            self._cache_dtype = dtype
        for b in filter(None, (self.binding, self._decode)):
            for (past, present), buffer in zip(self.plan.cache, self._cache):
                if not self._row_cache:  # rows are bound at each run: the prefix grows
                    b.bind_ortvalue_input(past, buffer)
                    b.bind_ortvalue_output(present, buffer)
        self._outputs: dict[int, tuple] = {}  # rows -> (logits, greedy or None) buffers
        self._rows = self._prefill_rows = None  # rows of the last run; rows bound to the prefill binding
        self._bind_outputs(1)  # last position only: one buffer for every run
        if self._decode is not None:
            self._ids, self._seqlens = self._fixed_inputs(self._decode, 1, "")
        self._verify = None  # the fixed-width verify binding, made at the first verify run
        self.run_options = _run_options(self.plan.run_config(decode=False))
        self._decode_options = _run_options(self.plan.run_config(decode=True))
        self._verify_options = _run_options(self.plan.run_config(decode=False, verify=True))

    def run(self, token_ids: np.ndarray, position: int, rows: int = 1) -> None:
        """Run TOKEN_IDS placed at POSITION..; the results (logits of the last ROWS tokens) stay where the plan put them."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
        total = position + ids.shape[1]
        check_fits(total, self.capacity)
        if not 1 <= rows <= ids.shape[1] or rows > self.verify_rows:
            raise GenerationError(f"cannot return logits for {rows} of {ids.shape[1]} tokens: this package returns "
                                  f"{self.verify_rows} row(s) per run; re-export it to verify proposed tokens")
        if self._decode is not None and ids.shape[1] == 1 and position > 0:
            self._ids.update_inplace(ids)
            self._seqlens.update_inplace(np.array([total - 1], dtype=np.int32))
            binding, options, self._rows = self._decode, self._decode_options, 1
            self._logits_value, self._greedy_value = self._outputs[1]
        elif self.verify_width is not None and ids.shape[1] == rows == self.verify_width and position > 0:
            binding, options = self._verify_binding(), self._verify_options
            self._verify_ids.update_inplace(ids)
            self._verify_seqlens.update_inplace(np.array([total - 1], dtype=np.int32))
            self._rows = rows
            self._logits_value, self._greedy_value = self._outputs[rows]
        else:
            binding, options = self.binding, self.run_options
            binding.bind_cpu_input(INPUT_IDS, ids)
            binding.bind_cpu_input(SEQLENS, np.array([total - 1], dtype=np.int32))
            binding.bind_cpu_input(TOTAL_LENGTH, np.array(total, dtype=np.int32))
            if self._row_cache:
                self._bind_rows(position, ids.shape[1])
            if self.plan.rows_input:
                binding.bind_cpu_input(self.plan.rows_input, self._rows_value(rows))
            # all_logits packages: one row per token, the shape follows the chunk
            self._bind_outputs(ids.shape[1] if self.all_logits else rows)
        try:
            with self._lock:
                self.session.run_with_iobinding(binding, options)
        except Exception:
            if binding is not self._verify:
                raise
            # A device that cannot capture or replay the verify shape: verify runs as prefill runs do from now on
            # (the same rows, no graph); the failed run's cache rows are written again.
            self.verify_width = None
            self.run(token_ids, position, rows)

    def last_logits(self, all_rows: bool = False) -> np.ndarray:
        """float32 logits of the last run's last token (every row it returned with ALL_ROWS); a GPU copies them here.
        On the host, a view of the numpy array the OrtValue wraps (a view of the OrtValue would not keep it alive)."""
        logits = self._host_arrays[f"{LOGITS}.{self._rows}"] if self.device == "cpu" else self._logits_value.numpy()
        if all_rows:
            return logits[0].astype(np.float32)
        return logits[0, -1].astype(np.float32, copy=False)

    def greedy_tokens(self) -> np.ndarray | None:
        """The argmax of every logits row the last run returned, from the graph's own output (ids cross to the host,
        not logits); None when the package has no such output."""
        if self._greedy_value is None:
            return None
        return (self._host_arrays[f"{GREEDY_OUTPUT}.{self._rows}"] if self.device == "cpu" else self._greedy_value.numpy())[0]

    def greedy_token(self) -> int | None:
        """The argmax of the last logits row from the graph's own output (one id crosses to the host);
        None when the package has no such output: sample from `last_logits` instead."""
        ids = self.greedy_tokens()
        return None if ids is None else int(ids[-1])

    def candidates(self, temperature: float) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The last run's most likely next tokens: (ids, logits / TEMPERATURE, log-sum-exp of logits / TEMPERATURE
        over the vocabulary), best first; None without a candidates head."""
        if self.head is None or self._rows != 1:
            return None
        if self._head_binding is None:  # bound on first use: greedy-only runners never pay for it
            self._head_binding = self.head.bind(self._outputs[1][0])
        return self._head_binding.run(temperature)

    def cache_arrays(self) -> list[np.ndarray]:
        """The cache buffers as numpy views (host caches only): for tests and inspection."""
        return [v.numpy() for v in self._cache]

    def touch_cache(self) -> None:
        if self.device == "cpu":  # device buffers are written when they are made
            super().touch_cache()

    # -- buffers --------------------------------------------------------------------------------------------
    def _bind_outputs(self, rows: int) -> None:
        """Bind the logits (and greedy) buffers of ROWS rows to the prefill binding (and, for one row, the decode one).
        Row counts up to KEPT_ROWS keep their buffers: a verify run neither reallocates them nor disturbs the decode
        step's; an all_logits chunk's [rows, vocab] buffer lives until the next run of another size."""
        if rows not in self._outputs:
            for n in [n for n in self._outputs if n > KEPT_ROWS]:  # the last all_logits chunk's buffers go
                del self._outputs[n]
                self._host_arrays.pop(f"{LOGITS}.{n}", None)
                self._host_arrays.pop(f"{GREEDY_OUTPUT}.{n}", None)
            logits = self._buffer(f"{LOGITS}.{rows}", np.empty((1, rows, self.vocab_size), dtype=self.logits_dtype))
            greedy = (self._buffer(f"{GREEDY_OUTPUT}.{rows}", np.zeros((1, rows), dtype=np.int64))
                      if self.plan.greedy_output else None)
            self._outputs[rows] = (logits, greedy)
            if rows == 1 and self._decode is not None:
                self._bind_result(self._decode, rows)
            self._prefill_rows = None
        if rows != self._prefill_rows:
            self._bind_result(self.binding, rows)
            self._prefill_rows = rows
        self._rows = rows
        self._logits_value, self._greedy_value = self._outputs[rows]

    def _bind_result(self, binding, rows: int) -> None:
        logits, greedy = self._outputs[rows]
        binding.bind_ortvalue_output(LOGITS, logits)
        if greedy is not None:
            binding.bind_ortvalue_output(self.plan.greedy_output, greedy)

    def _fixed_inputs(self, binding, width: int, suffix: str) -> tuple[ort.OrtValue, ort.OrtValue]:
        """Bind BINDING's inputs to buffers updated in place (ids of WIDTH tokens, the cache length); returns them."""
        ids = self._buffer(INPUT_IDS + suffix, np.zeros((1, width), dtype=np.int64))
        seqlens = self._buffer(SEQLENS + suffix, np.zeros(1, dtype=np.int32))
        total = self._host_value(TOTAL_LENGTH + suffix, np.array(self.plan.decode_total_length, dtype=np.int32))  # GQA reads it on the host
        binding.bind_ortvalue_input(INPUT_IDS, ids)
        binding.bind_ortvalue_input(SEQLENS, seqlens)
        binding.bind_ortvalue_input(TOTAL_LENGTH, total)
        if self.plan.rows_input:
            # Host memory: it is a Slice's start, which the CUDA EP reads on the host (no copy inside a captured graph).
            binding.bind_ortvalue_input(self.plan.rows_input, self._host_value(self.plan.rows_input + suffix, self._rows_value(width)))
        return ids, seqlens

    def _rows_value(self, rows: int) -> np.ndarray:
        return np.array([-rows if self.plan.rows_input == LOGITS_START else rows], dtype=np.int64)

    def _verify_binding(self):
        """The fixed-width verify run's binding: its own inputs, outputs and (under capture) CUDA graph."""
        if self._verify is None:
            width = self.verify_width
            self._verify = self.session.io_binding()
            for (past, present), buffer in zip(self.plan.cache, self._cache):
                self._verify.bind_ortvalue_input(past, buffer)
                self._verify.bind_ortvalue_output(present, buffer)
            self._verify_ids, self._verify_seqlens = self._fixed_inputs(self._verify, width, ".verify")
            if width not in self._outputs:
                current = self._rows
                self._bind_outputs(width)
                self._bind_outputs(current)  # the last run's results stay readable
            self._bind_result(self._verify, width)
        return self._verify

    def _bind_rows(self, held: int, new: int) -> None:
        """SH caches: each past input is the HELD rows of its buffer, each present output the NEW rows after them
        (raw pointers into the host buffers: no copy, no OrtValue per run)."""
        width = self.plan.cache_shape[1]
        for (past, present), buffer in zip(self.plan.cache, self._cache):
            start = buffer.data_ptr()
            self.binding.bind_input(past, "cpu", 0, self._cache_dtype, [held, width], start)
            self.binding.bind_output(present, "cpu", 0, self._cache_dtype, [new, width], start + held * self._row_bytes)

    def _buffer(self, name: str, array: np.ndarray) -> ort.OrtValue:
        """NAME's buffer with ARRAY's contents on the plan's device (a copy); on the host it wraps ARRAY."""
        if self.device == "cpu":
            return self._host_value(name, array)
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, self.device_id)

    def _host_value(self, name: str, array: np.ndarray) -> ort.OrtValue:
        self._host_arrays[name] = array
        return ort.OrtValue.ortvalue_from_numpy(array)


def lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed host array whose memory is taken page by page as it is written, and given back when it is freed.

    np.zeros is not that once a process has freed large buffers: glibc then serves calloc from its heap and
    clears (touches) every page, so each new generator on the 1.5B took most of its 224 MiB cache at once.
    An anonymous mapping starts as untouched zero pages and is unmapped when the array goes.
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _run_options(config: dict[str, str]) -> ort.RunOptions:
    options = ort.RunOptions()
    for key, value in config.items():
        options.add_run_config_entry(key, value)
    return options


class DynamicEngine(Engine):
    """One session over model.onnx; each runner (generator) binds its own cache to it.

    Where the backend captures CUDA graphs, each runner's decode step is its own graph (ids 1, 2, ...) and
    runs take turns: graph replays share the session's scratch memory.
    """

    def __init__(self, backend: Backend, package: Package, options: BackendOptions):
        self.backend = backend
        self.manifest = manifest = package.manifest
        decoder = manifest.graphs.get("decoder")
        if not isinstance(decoder, dict):
            raise PackageError(f"{package.folder}: the manifest names no decoder graph: re-export the package")
        self.session = backend.create_session(str(package.graph(decoder.get("file"), "the decoder graph")), options)
        check_graph(package.folder, self.session, manifest)
        self.graph_capture = backend.graph_capture(options)
        self.device_id = backend.device_id(options)
        self.head = backend.candidate_head(manifest.architecture["vocab_size"], np.dtype(manifest.activation_dtype), options)
        self._graph_ids = itertools.count(1, 2)  # each runner: its decode graph and its verify graph
        self._run_lock = threading.Lock() if self.graph_capture else None

    def new_runner(self) -> "DynamicRunner":
        graph_id = next(self._graph_ids) if self.graph_capture else None
        plan = binding_plan(self.manifest, self.backend.ort_device, graph_id)
        return DynamicRunner(self.session, self.manifest, self.backend.ort_device, self.device_id, plan=plan,
                             run_lock=self._run_lock, head=self.head)


_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}


def check_graph(path: Path, session, manifest: Manifest) -> None:
    """The graph must be the one the manifest describes: the runner binds buffers by the manifest's names,
    shapes and dtypes, and a mismatch would otherwise fail deep inside onnxruntime at the first token."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise PackageError(f"{path}: the graph does not match the manifest: {what}: the package is damaged, re-export it")

    decoder, kv = manifest.graphs["decoder"], manifest.kv_cache
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    listed_in, listed_out = decoder.get("inputs"), decoder.get("outputs")
    for kind, graph, listed in (("inputs", inputs, listed_in), ("outputs", outputs, listed_out)):
        need(isinstance(listed, list) and all(isinstance(n, str) for n in listed), f"the manifest lists no {kind} names")
        only_graph, only_manifest = sorted(set(graph) - set(listed))[:3], sorted(set(listed) - set(graph))[:3]
        need(not only_graph and not only_manifest, f"{kind} only in the graph {only_graph}, only in the manifest {only_manifest}")
    need({"input_ids", "seqlens_k", "total_sequence_length"} <= set(inputs) and "logits" in outputs,
         "input_ids, seqlens_k, total_sequence_length and logits are required")
    # One past input and one present output per layer for keys, and again for values.
    past = [n for n in listed_in if n.startswith("past_key_values.")]
    present = [n for n in listed_out if n.startswith("present.")]
    need(len(past) == len(present) == 2 * kv["num_layers"], f"{len(past)} cache inputs for {kv['num_layers']} layers")
    rows = kv.get("layout", "BNSH") == "SH"
    for name in past + present:
        value = inputs.get(name) or outputs[name]
        if rows:  # [tokens, kv heads * head dim]
            fits = len(value.shape) == 2 and value.shape[1] == kv["num_kv_heads"] * kv["head_dim"]
        else:  # [batch, kv heads, context, head dim]
            fits = len(value.shape) == 4 and value.shape[1] == kv["num_kv_heads"] and value.shape[3] == kv["head_dim"]
        need(fits, f"{name} has shape {value.shape}, the manifest says {kv['num_kv_heads']} heads of {kv['head_dim']} "
                   f"in layout {kv.get('layout', 'BNSH')}")
        need(value.type == _ORT_TYPES[kv["dtype"]], f"{name} is {value.type}, the manifest says {kv['dtype']}")
    logits = outputs["logits"]
    need(logits.shape[-1] == manifest.architecture["vocab_size"],
         f"logits have {logits.shape[-1]} columns, the manifest says vocab_size {manifest.architecture['vocab_size']}")
    need(logits.type == _ORT_TYPES[manifest.activation_dtype],
         f"logits are {logits.type}, the manifest says {manifest.activation_dtype}")
