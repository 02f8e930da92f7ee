"""The Python API an app embeds: `load` a package on a device, then `generate`, `stream`, or drive a `Generator`.

Thread safety: a loaded Model may serve several generators at once, one per thread; each has its own
KV cache, and onnxruntime sessions accept concurrent runs. One generator must not be shared by threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .backends import BackendOptions, get_backend
from .chat import ChatFormat, Reply, split_reasoning
from .errors import GenerationError, PackageError
from .generator import Generator, StopConditions, Timings, run_loop
from .package import Manifest, load_manifest
from .sampler import SamplingParams
from .tokenizer import TextTokenizer


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
        tok = self.manifest.tokenizer
        self.tokenizer = TextTokenizer.from_package(path, tok["bos_token_id"], tok["add_bos_token"])
        self.chat_format = ChatFormat(self.tokenizer, tok["chat_template"], tok["chat_format"])
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
        return Generator(self.engine.new_runner(), self.spec.vocab_size, sampling or self.default_sampling())

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
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prompt_ids = self.encode_prompt(prompt_or_messages, raw)
        if len(prompt_ids) >= self.context_length:
            raise GenerationError(
                f"the prompt has {len(prompt_ids)} tokens, the context holds {self.context_length}: "
                "shorten it or export with a larger --context"
            )
        generator = self.generator(sampling)
        decoder = self.tokenizer.stream_decoder()
        text, ids = [], []
        stop = tuple(stop)
        stop_hit = []

        def check_stop(_token: int) -> bool:
            return bool(stop) and any(s in "".join(text)[-(len(s) + 64):] for s in stop)

        conditions = StopConditions(max_new_tokens, self.eos_token_ids, stop, ignore_eos)
        loop = run_loop(generator, prompt_ids, conditions, on_token=None)
        finish = "length"
        try:
            while True:
                token = next(loop)
                ids.append(token)
                piece = decoder.feed(token)
                if piece:
                    text.append(piece)
                    yield piece
                if check_stop(token):
                    stop_hit.append(True)
                    finish = "stop_string"
                    break
        except StopIteration as done:
            finish = done.value or finish
        tail = decoder.flush()
        if tail:
            text.append(tail)
            yield tail
        if result is not None:
            full = "".join(text)
            if stop_hit:
                cut = min(full.find(s) for s in stop if s in full)
                full = full[:cut]
            reply: Reply = split_reasoning(full, self.chat_format.opens_thinking and not raw)
            result.text, result.reasoning, result.answer = reply.raw, reply.reasoning, reply.answer
            result.token_ids, result.prompt_tokens, result.finish_reason = ids, len(prompt_ids), finish
            result.timings = generator.timings

    def generate(self, prompt_or_messages, max_new_tokens: int = 256, sampling: SamplingParams | None = None,
                 stop: tuple[str, ...] = (), raw: bool = False, ignore_eos: bool = False) -> GenerationResult:
        result = GenerationResult("", "", "", [], 0, "")
        for _ in self.stream(prompt_or_messages, max_new_tokens, sampling, stop, raw, ignore_eos, result):
            pass
        return result


def _engine(backend, path: Path, manifest: Manifest, options: BackendOptions):
    if manifest.graph_flavour == "static":
        from .static_runner import StaticEngine

        return StaticEngine(backend, path, manifest, options)
    return DynamicEngine(backend, path, manifest, options)


class DynamicEngine:
    """One session over model.onnx; each runner (generator) binds its own cache to it."""

    def __init__(self, backend, path: Path, manifest: Manifest, options: BackendOptions):
        self.backend = backend
        self.manifest = manifest
        self.session = backend.create_session(str(path / manifest.graphs["decoder"]["file"]), options)

    def new_runner(self):
        from .kv_runner import DynamicRunner

        return DynamicRunner(self.session, self.manifest, self.backend.ort_device)
