"""The Python API an app embeds: `load` a package on a device, then `generate`, `stream`, or drive a `Generator`.

Thread safety: a loaded Model may serve several generators at once, one per thread; each has its own
KV cache, and onnxruntime sessions accept concurrent runs. One generator must not be shared by threads.
"""

from __future__ import annotations

import itertools
import numbers
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import BackendOptions, get_backend
from .chat import ChatFormat, Reply, split_reasoning
from .errors import GenerationError, PackageError
from .generator import PREFILL_CHUNK, Generator, StopConditions, Timings, run_loop
from .package import Manifest, load_manifest
from .sampler import SamplingParams
from .tokenizer import TextStopper, TextTokenizer


@dataclass
class GenerationResult:
    text: str  # the whole reply as generated (reasoning included)
    reasoning: str  # DeepSeek-R1: the part inside <think>...</think>
    answer: str  # the part after </think> (the whole text for models that do not think)
    token_ids: list[int]  # generated ids only
    prompt_tokens: int
    finish_reason: str  # eos | stop_string | length | context
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict:
        return {
            "text": self.text, "reasoning": self.reasoning, "answer": self.answer, "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens, "finish_reason": self.finish_reason, "timings": self.timings.to_dict(),
        }


def load(path: str | Path, device: str = "cpu", verify: bool = True, options: BackendOptions | None = None) -> "Model":
    """Load an exported package on DEVICE (cpu, cuda, qnn). verify=False skips the sha256 check of the files."""
    return Model(Path(path), device, verify, options or BackendOptions())


class Model:
    def __init__(self, path: Path, device: str, verify: bool, options: BackendOptions):
        self.backend = get_backend(device)
        self.backend.require()
        started = time.perf_counter()
        self.path = path
        self.manifest: Manifest = load_manifest(path, verify=verify)
        if self.manifest.target != self.backend.target:
            raise PackageError(
                f"{path} was exported for {self.manifest.target}, not {device}: "
                f"re-export with `edgeinfer export SOURCE --target {self.backend.target}` or use --device {self.manifest.target}"
            )
        self.options = options
        session_started = time.perf_counter()
        self.engine = _engine(self.backend, path, self.manifest, options)
        self.session_s = time.perf_counter() - session_started  # includes any compile/cache step
        # A GPU runner's cache buffers and captured decode graph cost milliseconds to make: requests reuse them.
        self._runners = RunnerPool(self.engine, keep=self.backend.kv_location == "device")
        tok = self.manifest.tokenizer
        self.tokenizer = TextTokenizer.from_package(path, tok["bos_token_id"], tok["add_bos_token"])
        if self.tokenizer.vocab_size > self.spec.vocab_size:  # e.g. tokenizer.json from another model
            raise PackageError(
                f"{path}: the tokenizer has {self.tokenizer.vocab_size} tokens, the model {self.spec.vocab_size}: "
                "the package mixes files of two models, re-export it"
            )
        self.chat_format = ChatFormat(self.tokenizer, tok["chat_template"], tok["chat_format"], self.context_length)
        self.eos_token_ids = tuple(tok["eos_token_ids"])
        self.load_s = time.perf_counter() - started

    @property
    def spec(self):
        return self.manifest.spec

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    def default_sampling(self) -> SamplingParams:
        # DeepSeek-R1's recommendation (0.6 / 0.95) is also a sound default for other chat models.
        return SamplingParams(temperature=0.6, top_p=0.95)

    def generator(self, sampling: SamplingParams | None = None) -> Generator:
        """A fresh generator with its own KV cache."""
        return self._generator(self.engine.new_runner(), sampling)

    def _generator(self, runner, sampling: SamplingParams | None) -> Generator:
        chunk = getattr(runner, "prefill_chunk", None) or PREFILL_CHUNK
        return Generator(runner, self.spec.vocab_size, sampling or self.default_sampling(), prefill_chunk=chunk)

    def encode_prompt(self, prompt_or_messages, raw: bool = False) -> list[int]:
        if raw:
            if not isinstance(prompt_or_messages, str):
                raise GenerationError("a raw prompt must be a string")
            ids = self.tokenizer.encode(prompt_or_messages)
        else:
            ids = self.chat_format.encode(prompt_or_messages)
        if not ids or (isinstance(prompt_or_messages, str) and not prompt_or_messages.strip() and raw):
            raise GenerationError("the prompt is empty: pass some text")
        return ids

    def stream(self, prompt_or_messages, max_new_tokens: int = 256, sampling: SamplingParams | None = None,
               stop: tuple[str, ...] = (), raw: bool = False, ignore_eos: bool = False,
               result: GenerationResult | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated. Pass RESULT to receive ids, split text and timings at the end."""
        if isinstance(prompt_or_messages, str) and not prompt_or_messages.strip():
            raise GenerationError("the prompt is empty: pass some text")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        stop = (stop,) if isinstance(stop, str) else tuple(stop)  # one string is one stop string, not its letters
        if not all(isinstance(s, str) and s for s in stop):
            raise GenerationError(f"stop strings must be non-empty strings, got {stop!r}")
        prompt_ids = self.encode_prompt(prompt_or_messages, raw)
        if len(prompt_ids) >= self.context_length:
            raise GenerationError(
                f"the prompt has {len(prompt_ids)} tokens, the context holds {self.context_length}: "
                "shorten it or export with a larger --context"
            )
        runner = self._runners.acquire()
        generator = self._generator(runner, sampling)
        decoder = self.tokenizer.stream_decoder()
        stopper = TextStopper(stop)
        ids: list[int] = []
        loop = run_loop(generator, prompt_ids, StopConditions(max_new_tokens, self.eos_token_ids, ignore_eos))
        finish = "length"
        try:
            while True:
                try:
                    token = next(loop)
                except StopIteration as done:
                    finish = done.value
                    break
                ids.append(token)
                piece = stopper.feed(decoder.feed(token))
                if piece:
                    yield piece
                if stopper.stopped:
                    finish = "stop_string"
                    break
        finally:  # finished, cancelled or failed: the next request may reuse the runner
            loop.close()
            self._runners.release(runner)
        if not stopper.stopped:
            tail = stopper.feed(decoder.flush()) + stopper.flush()
            finish = "stop_string" if stopper.stopped else finish
            if tail:
                yield tail
        if result is not None:
            reply: Reply = split_reasoning(stopper.text, self.chat_format.opens_thinking and not raw)
            result.text, result.reasoning, result.answer = reply.raw, reply.reasoning, reply.answer
            result.token_ids, result.prompt_tokens, result.finish_reason = ids, len(prompt_ids), finish
            result.timings = generator.timings

    def generate(self, prompt_or_messages, max_new_tokens: int = 256, sampling: SamplingParams | None = None,
                 stop: tuple[str, ...] = (), raw: bool = False, ignore_eos: bool = False) -> GenerationResult:
        result = GenerationResult("", "", "", [], 0, "")
        for _ in self.stream(prompt_or_messages, max_new_tokens, sampling, stop, raw, ignore_eos, result):
            pass
        return result


class RunnerPool:
    """Runners that finished requests, kept for the next ones when KEEP (else each request makes its own).

    A runner holds no request state (the generator does), so any idle one serves; the pool grows to the
    number of requests that ran at once.
    """

    def __init__(self, engine, keep: bool):
        self.engine, self._keep = engine, keep
        self._idle: list = []
        self._lock = threading.Lock()

    def acquire(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.engine.new_runner()

    def release(self, runner) -> None:
        if self._keep:
            with self._lock:
                self._idle.append(runner)


def _engine(backend, path: Path, manifest: Manifest, options: BackendOptions):
    if manifest.graph_flavour == "static":
        from .static_runner import StaticEngine

        return StaticEngine(backend, path, manifest, options)
    return DynamicEngine(backend, path, manifest, options)


class DynamicEngine:
    """One session over model.onnx; each runner (generator) binds its own cache to it.

    Where the backend captures CUDA graphs, each runner's decode step is its own graph (ids 1, 2, ...) and
    runs take turns: graph replays share the session's scratch memory.
    """

    def __init__(self, backend, path: Path, manifest: Manifest, options: BackendOptions):
        self.backend = backend
        self.manifest = manifest
        decoder = manifest.graphs.get("decoder")
        if not isinstance(decoder, dict) or not isinstance(decoder.get("file"), str) or decoder["file"] not in manifest.files:
            raise PackageError(f"{path}: the manifest names no verified decoder graph: re-export the package")
        self.session = backend.create_session(str(path / decoder["file"]), options)
        check_graph(path, self.session, manifest)
        self.graph_capture = backend.graph_capture(options)
        self.head = backend.candidate_head(manifest.architecture["vocab_size"], np.dtype(manifest.activation_dtype), options)
        self._graph_ids = itertools.count(1)
        self._run_lock = threading.Lock() if self.graph_capture else None

    def new_runner(self):
        from .kv_runner import DynamicRunner, binding_plan

        graph_id = next(self._graph_ids) if self.graph_capture else None
        plan = binding_plan(self.manifest, self.backend.ort_device, graph_id)
        return DynamicRunner(self.session, self.manifest, self.backend.ort_device, plan=plan, run_lock=self._run_lock,
                             head=self.head)


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
    for name in past + present:
        value = inputs.get(name) or outputs[name]
        need(len(value.shape) == 4 and value.shape[1] == kv["num_kv_heads"] and value.shape[3] == kv["head_dim"],
             f"{name} has shape {value.shape}, the manifest says {kv['num_kv_heads']} heads of {kv['head_dim']}")
        need(value.type == _ORT_TYPES[kv["dtype"]], f"{name} is {value.type}, the manifest says {kv['dtype']}")
    logits = outputs["logits"]
    need(logits.shape[-1] == manifest.architecture["vocab_size"],
         f"logits have {logits.shape[-1]} columns, the manifest says vocab_size {manifest.architecture['vocab_size']}")
    need(logits.type == _ORT_TYPES[manifest.activation_dtype],
         f"logits are {logits.type}, the manifest says {manifest.activation_dtype}")
