"""One request's generation, run in its own worker thread on a generator of its own.

The thread takes the kept cache that shares the most with the prompt (or a fresh generator), streams text
pieces to the event loop, and on a normal end keeps the generator for later turns. A cancelled job (its
client left, the server is stopping) stops after the current model step and drops its generator, so the KV
cache's memory is freed then, not kept.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from ..errors import EdgeInferError
from ..model import GenerationResult, Model
from .api_errors import SERVER_ERROR, APIError
from .prefix_cache import KeptCache, PrefixCache
from .prompt import Prompt
from .schema import GenerationRequest

log = logging.getLogger("edgeinfer.serve")


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    error: APIError


class Job:
    def __init__(self, model: Model, cache: PrefixCache, prompt: Prompt, request: GenerationRequest):
        self.model, self.cache, self.prompt, self.request = model, cache, prompt, request
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()  # str pieces, then one Finished or Failed
        self._cancelled = threading.Event()
        self.thread = threading.Thread(target=self._run, name="edgeinfer-generation", daemon=True)

    def cancel(self, error: APIError | None = None) -> None:
        """Stop after the current model step. ERROR (given on the event loop's thread): the request's response
        ends with it now, without waiting for that step."""
        self._cancelled.set()
        if error is not None:
            self.events.put_nowait(Failed(error))

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def next_event(self) -> str | Finished:
        event = await self.events.get()
        if isinstance(event, Failed):
            raise event.error
        return event

    async def result(self) -> GenerationResult:
        while not isinstance(event := await self.next_event(), Finished):
            pass
        return event.result

    def _emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: the server is gone, nobody listens
            self.cancel()

    def _run(self) -> None:
        prompt, request, kept, stream = self.prompt, self.request, None, None
        try:
            kept = self.cache.take(prompt.ids) or KeptCache(self.model.generator(request.sampling))
            stream = self.model.stream_ids(prompt.ids, prompt.max_new_tokens, request.sampling, request.stop,
                                           request.ignore_eos, generator=kept.generator, thinking=prompt.thinking)
            for piece in stream:
                if self.cancelled:
                    return
                self._emit(piece)
            if self.cancelled:
                return
            self.cache.put(kept)
            kept = None  # the cache's now
            self._emit(Finished(stream.result))
        except EdgeInferError as exc:  # the prompt was checked before: this is the model's or the package's fault
            self._emit(Failed(APIError(500, f"generation failed: {exc}", type=SERVER_ERROR, code="generation_failed")))
        except Exception as exc:  # a bug: say so in one line, keep the trace in the log
            log.exception("generation failed")
            self._emit(Failed(APIError(500, f"internal error ({type(exc).__name__}): see the server log",
                                       type=SERVER_ERROR, code="internal_error")))
        finally:
            if stream is not None:
                stream.close()  # a cancelled stream stops here
            if kept is not None:  # cancelled or failed: its KV cache goes now (on a GPU, its buffers to the pool)
                self.model.recycle(kept.generator)


class Workers:
    """The jobs running now, so that a stopping server can cancel them and wait for their threads."""

    def __init__(self, model: Model, cache: PrefixCache):
        self.model, self.cache = model, cache
        self._jobs: set[Job] = set()

    def start(self, prompt: Prompt, request: GenerationRequest) -> Job:
        job = Job(self.model, self.cache, prompt, request)
        self._jobs = {j for j in self._jobs if j.thread.is_alive()} | {job}
        job.thread.start()
        return job

    def cancel_all(self, error: APIError | None = None) -> None:
        for job in self._jobs:
            job.cancel(error)

    def join(self, timeout_s: float) -> bool:
        """Wait up to TIMEOUT_S for every job's thread; True if all ended."""
        deadline = time.monotonic() + timeout_s
        for job in list(self._jobs):
            job.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(job.thread.is_alive() for job in self._jobs)

