"""The Python API an app embeds: `load` a package on a device, then `generate`, `stream`, or drive a `Generator`.

Thread safety: a loaded Model may serve several generators at once, one per thread; each has its own
KV cache, and onnxruntime sessions accept concurrent runs. One generator must not be shared by threads.
"""

from __future__ import annotations

import numbers
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


from .backends import BackendOptions, get_backend
from .chat import ChatFormat, Reply, split_reasoning
from .errors import GenerationError, PackageError, check_fits
from .generator import Generator, StopCriteria, Timings, TokenLoop
from .dynamic_runner import DynamicEngine
from .package import Manifest, Package, load_package
from .runner import Engine
from .sampler import SamplingParams
from .speculative import Speculation, as_speculation, speculative_loop
from .tokenizer import TextStopper, TextTokenizer


@dataclass
class GenerationResult:
    text: str = ""  # the whole reply as generated (reasoning included)
    reasoning: str = ""  # DeepSeek-R1: the part inside <think>...</think>
    answer: str = ""  # the part after </think> (the whole text for models that do not think)
    token_ids: list[int] = field(default_factory=list)  # generated ids only
    prompt_tokens: int = 0
    finish_reason: str = ""  # eos | stop_string | length | context
    timings: Timings = field(default_factory=Timings)  # its prompt_tokens: those run now (cached ones were not)
    cached_tokens: int = 0  # prompt tokens a kept generator already held, not run again

    def to_dict(self) -> dict:
        return {
            "text": self.text, "reasoning": self.reasoning, "answer": self.answer, "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
            "finish_reason": self.finish_reason, "timings": self.timings.to_dict(),
        }


def load(path: str | Path, device: str = "cpu", verify: bool = True, options: BackendOptions | None = None,
         speculate: "str | Speculation" = "auto") -> "Model":
    """Load an exported package on DEVICE (cpu, cuda, qnn). verify=False skips the sha256 check of the files.
    SPECULATE: how generations speculate unless they say otherwise (speculative.Speculation; a mode name: auto, off,
    lookup; draft needs Speculation("draft", draft=load(PKG)))."""
    model = Model(Path(path), device, verify, options or BackendOptions())
    model.speculation = as_speculation(speculate)
    return model


class Model:
    def __init__(self, path: Path, device: str, verify: bool, options: BackendOptions):
        self.backend = get_backend(device)
        self.backend.require()
        started = time.perf_counter()
        self.path = path
        package = load_package(path, verify=verify)
        self.manifest: Manifest = package.manifest
        if self.manifest.target not in (self.backend.target, *self.backend.also_runs):
            raise PackageError(
                f"{path} was exported for {self.manifest.target}, not {device}: "
                f"re-export with `edgeinfer export SOURCE --target {self.backend.target}` or use --device {self.manifest.target}"
            )
        self.options = options
        session_started = time.perf_counter()
        self.engine = _engine(self.backend, package, options)
        self.session_s = time.perf_counter() - session_started  # includes any compile/cache step
        # A GPU runner's cache buffers and captured decode graph cost milliseconds to make: requests reuse them.
        self._runners = RunnerPool(self.engine, keep=self.backend.kv_location == "device")
        tok = self.manifest.tokenizer
        self.tokenizer = TextTokenizer.from_package(package, tok["bos_token_id"], tok["add_bos_token"])
        if self.tokenizer.vocab_size > self.spec.vocab_size:  # e.g. tokenizer.json from another model
            raise PackageError(
                f"{path}: the tokenizer has {self.tokenizer.vocab_size} tokens, the model {self.spec.vocab_size}: "
                "the package mixes files of two models, re-export it"
            )
        self.chat_format = ChatFormat(self.tokenizer, tok["chat_template"], tok["chat_format"], self.context_length)
        self.eos_token_ids = tuple(tok["eos_token_ids"])
        self.load_s = time.perf_counter() - started
        self.speculation = Speculation()  # auto: adaptive prompt lookup for greedy decoding (speculative.py)

    @property
    def spec(self):
        return self.manifest.spec

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    def default_sampling(self) -> SamplingParams:
        return SamplingParams()  # DeepSeek-R1's recommendation (0.6 / 0.95), a sound default for other chat models

    def generator(self, sampling: SamplingParams | None = None) -> Generator:
        """A fresh generator with its own KV cache (on a GPU, maybe the buffers of one given back by `recycle`)."""
        return Generator(self._runners.acquire(), self.spec.vocab_size, sampling or self.default_sampling())

    def recycle(self, generator: Generator) -> None:
        """The caller is done with GENERATOR: a later `generator()` may reuse its cache buffers and decode graph
        (kept on GPUs, where making them costs milliseconds and each new CUDA graph stays with the session)."""
        self._runners.release(generator.runner)

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
               generator: Generator | None = None, speculate: "str | Speculation | None" = None) -> "TextStream":
        """Text pieces as they are generated; once the stream ends, its `result` holds ids, split text and timings.

        GENERATOR: run on this generator's cache instead of a fresh one. The tokens it holds that begin this
        prompt (a chat's earlier turns) are not run again; afterwards it holds this exchange, for the next call.
        SPECULATE: speculative decoding for this call (None: the model's `speculation`); the output is the same.
        """
        return TextStream(self._pieces(prompt_or_messages, max_new_tokens, sampling, stop, raw, ignore_eos, generator,
                                       speculate))

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int = 256, sampling: SamplingParams | None = None,
                   stop: tuple[str, ...] = (), ignore_eos: bool = False, generator: Generator | None = None,
                   thinking: bool = False, speculate: "str | Speculation | None" = None) -> "TextStream":
        """`stream` for a prompt already encoded (`encode_prompt`). THINKING: the prompt opened DeepSeek-R1's
        <think> (messages encoded for a deepseek-r1 chat format), so the reply starts with reasoning."""
        def pieces():  # checked when iterated, as `stream` does
            criteria = self._criteria(prompt_ids, max_new_tokens, stop, ignore_eos)
            return (yield from self._token_pieces(list(prompt_ids), criteria, sampling, generator, thinking, speculate))

        return TextStream(pieces())

    def generate(self, prompt_or_messages, max_new_tokens: int = 256, sampling: SamplingParams | None = None,
                 stop: tuple[str, ...] = (), raw: bool = False, ignore_eos: bool = False,
                 generator: Generator | None = None, speculate: "str | Speculation | None" = None) -> GenerationResult:
        stream = self.stream(prompt_or_messages, max_new_tokens, sampling, stop, raw, ignore_eos, generator, speculate)
        for _ in stream:
            pass
        return stream.result

    def _pieces(self, prompt_or_messages, max_new_tokens, sampling, stop, raw, ignore_eos, generator, speculate=None):
        """The request's text pieces; returns (via StopIteration, read by TextStream) its GenerationResult."""
        criteria = self._criteria(prompt_or_messages, max_new_tokens, stop, ignore_eos)
        prompt_ids = self.encode_prompt(prompt_or_messages, raw)
        thinking = self.chat_format.opens_thinking and not raw
        return (yield from self._token_pieces(prompt_ids, criteria, sampling, generator, thinking, speculate))

    def _token_pieces(self, prompt_ids: list[int], criteria: StopCriteria, sampling, generator, thinking: bool,
                      speculate=None):
        if not prompt_ids:
            raise GenerationError("the prompt is empty: pass some text")
        check_fits(len(prompt_ids) + 1, self.context_length)  # room for at least the first new token
        sampling = sampling or self.default_sampling()
        pooled = generator is None
        if pooled:
            generator = Generator(self._runners.acquire(), self.spec.vocab_size, sampling)
        else:
            generator.use_sampling(sampling)
        cached = generator.keep_common_prefix(prompt_ids)
        speculation = self.speculation if speculate is None else as_speculation(speculate)
        loop = (speculative_loop(generator, prompt_ids[cached:], criteria, speculation)
                or TokenLoop(generator, prompt_ids[cached:], criteria))
        decoder, stopper = self.tokenizer.stream_decoder(), TextStopper(criteria.stop_strings)
        ids: list[int] = []
        try:
            for token in loop:
                ids.append(token)
                if piece := stopper.feed(decoder.feed(token)):
                    yield piece
                if stopper.stopped:
                    loop.stop("stop_string")
        finally:  # finished, cancelled or failed: the next request may reuse the runner
            if pooled:
                self._runners.release(generator.runner)
        if not stopper.stopped:
            if tail := stopper.feed(decoder.flush()) + stopper.flush():
                yield tail
            if stopper.stopped:
                loop.stop("stop_string")
        reply: Reply = split_reasoning(stopper.text, thinking)
        return GenerationResult(reply.raw, reply.reasoning, reply.answer, ids, len(prompt_ids),
                                "stop_string" if stopper.stopped else loop.finish_reason, loop.timings, cached)

    def _criteria(self, prompt_or_messages, max_new_tokens, stop, ignore_eos) -> StopCriteria:
        if isinstance(prompt_or_messages, str) and not prompt_or_messages.strip():
            raise GenerationError("the prompt is empty: pass some text")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        stop = (stop,) if isinstance(stop, str) else tuple(stop)  # one string is one stop string, not its letters
        if not all(isinstance(s, str) and s for s in stop):
            raise GenerationError(f"stop strings must be non-empty strings, got {stop!r}")
        return StopCriteria(int(max_new_tokens), self.eos_token_ids, stop, ignore_eos)


class TextStream:
    """Iterates a request's text pieces; `result` is its GenerationResult once the last piece is out."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as end:
            self.result = end.value
            raise StopIteration from None

    def close(self) -> None:
        """Cancel the request (its cache goes back to the pool)."""
        self._pieces.close()


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


def _engine(backend, package: Package, options: BackendOptions) -> Engine:
    if package.manifest.graph_flavour == "static":
        from .static_runner import StaticEngine

        return StaticEngine(backend, package, options)
    return DynamicEngine(backend, package, options)
