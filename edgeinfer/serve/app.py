"""The HTTP surface (Starlette): routes, bearer auth, body limits, and each generation request's life.

A generation request: body read within the size limit and the read deadline -> checked and encoded (in a
thread: a long prompt's tokenization must not stall other clients) -> admitted by the scheduler -> its job
runs while the request watches for its client leaving -> JSON or server-sent events -> its slot goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Awaitable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..model import Model
from . import responses, sse
from .api_errors import SERVER_ERROR, APIError, bad_request
from .jobs import Finished, Workers
from .prefix_cache import PrefixCache, kv_bytes_per_token
from .prompt import Prompt, encode_prompt
from .reasoning import ReasoningSplitter
from .scheduler import Scheduler
from .schema import GenerationRequest, parse_request
from .settings import ServeSettings

PUBLIC_PATHS = {"/health"}  # answered without the API key: a supervisor's liveness probe holds no secret
JOIN_TIMEOUT_S = 5.0  # at shutdown, how long cancelled jobs get to finish their current model step


class ClientGone(Exception):
    """The client closed its connection: there is nobody to answer."""


class ServerState:
    """What every route reads: the model, the settings, and the request machinery around the model."""

    def __init__(self, model: Model, settings: ServeSettings):
        self.model, self.settings = model, settings
        self.scheduler = Scheduler(settings.parallel, settings.queue)
        self.cache = PrefixCache(settings.cache_bytes, kv_bytes_per_token(model.manifest), model.context_length,
                                 host_memory=model.backend.kv_location == "host", on_drop=model.recycle)
        self.workers = Workers(model, self.cache)
        self.created = int(time.time())

    def begin_shutdown(self) -> None:
        """Signal received: admit nothing more; queued requests get a 503 now, running ones after the graceful
        period unless they finish first (their responses then end with the error: a stream as its last event)."""
        if self.scheduler.closed:
            return
        self.scheduler.close()
        stopped = APIError(503, "the server stopped before this request finished: retry after it restarts",
                           code="shutting_down", type=SERVER_ERROR)
        asyncio.get_running_loop().call_later(self.settings.shutdown_timeout_s, self.workers.cancel_all, stopped)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_gone(awaitable: Awaitable, watch: asyncio.Task):
    """AWAITABLE's result, unless WATCH (the client leaving) ends first: then ClientGone."""
    work = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this request itself is cancelled (shutdown timeout)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
    if work.cancelled():
        raise ClientGone
    return work.result()


async def read_body(scope, receive, settings: ServeSettings) -> bytes:
    """The request body, within the size limit and the read deadline (a 413 or a 408 otherwise)."""
    limit = settings.max_body_bytes
    too_large = APIError(413, f"the request body is larger than the server's limit of {limit} bytes: send a shorter "
                         "prompt, or start the server with a larger --max-body-mb", code="request_too_large",
                         headers={"Connection": "close"})  # the rest of the body is not read: the connection ends
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large if declared.isdigit() else bad_request("the Content-Length header is not a number")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.read_timeout_s):
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
                more = message.get("more_body", False)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {settings.read_timeout_s:g} s: send it at once",
                       code="request_timeout", headers={"Connection": "close"}) from None
    return b"".join(chunks)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes):
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise bad_request(f"the request body is not valid JSON ({detail}): send a JSON object",
                          None, "invalid_json") from None


class GenerationEndpoint:
    """POST /v1/chat/completions (ENDPOINT "chat") or /v1/completions ("completion"), as a raw ASGI app: it
    needs the connection itself, to notice a client that leaves while it waits or generates."""

    def __init__(self, state: ServerState, endpoint: str):
        self.state, self.endpoint = state, endpoint

    def _prepare(self, body: bytes) -> tuple[GenerationRequest, Prompt]:
        request = parse_request(parse_json(body), self.endpoint, self.state.model.default_sampling())
        return request, encode_prompt(self.state.model, request)

    async def __call__(self, scope, receive, send) -> None:
        watch = None
        try:
            body = await read_body(scope, receive, self.state.settings)
            request, prompt = await asyncio.to_thread(self._prepare, body)
            watch = asyncio.ensure_future(wait_for_disconnect(receive))
            ticket = self.state.scheduler.admit()
            try:
                await until_gone(ticket.granted, watch)
                ticket.start()
                job = self.state.workers.start(prompt, request)
                try:
                    envelope = responses.Envelope(self.endpoint, self.state.settings.model_id)
                    if request.stream:
                        await until_gone(self._stream(job, request, prompt, envelope, send), watch)
                    else:
                        result = await until_gone(job.result(), watch)
                        payload = (responses.chat_completion(envelope, result, prompt.thinking) if self.endpoint == "chat"
                                   else responses.text_completion(envelope, result))
                        await JSONResponse(payload)(scope, receive, send)
                finally:
                    job.cancel()  # a no-op once it finished; else it stops after its current step
            finally:
                ticket.release()
        except ClientGone:
            pass
        except APIError as error:  # before any byte of the response: a stream reports its own errors as events
            await error_response(error)(scope, receive, send)
        finally:
            if watch is not None:
                watch.cancel()

    async def _stream(self, job, request: GenerationRequest, prompt: Prompt, envelope, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", f"{sse.MEDIA_TYPE}; charset=utf-8".encode()),
            *((k.lower().encode(), v.encode()) for k, v in sse.HEADERS.items())]})

        async def emit(payload: bytes) -> None:
            await send({"type": "http.response.body", "body": payload, "more_body": True})

        usage = request.include_usage
        chat = self.endpoint == "chat"
        splitter = ReasoningSplitter(prompt.thinking)
        try:
            if chat:
                await emit(sse.event(responses.chat_chunk(envelope, {"role": "assistant", "content": ""}, None, usage)))
            while not isinstance(event := await job.next_event(), Finished):
                if not chat:
                    await emit(sse.event(responses.completion_chunk(envelope, event, None, usage)))
                elif delta := _delta(*splitter.feed(event)):
                    await emit(sse.event(responses.chat_chunk(envelope, delta, None, usage)))
            if chat and (delta := _delta(*splitter.finish())):
                await emit(sse.event(responses.chat_chunk(envelope, delta, None, usage)))
            for chunk in responses.final_chunks(envelope, event.result, usage):
                await emit(sse.event(chunk))
        except APIError as error:  # the headers are out: the error travels as an event, as OpenAI's clients read it
            await emit(sse.event(error.body()))
        await send({"type": "http.response.body", "body": sse.DONE, "more_body": False})


def _delta(reasoning: str, content: str) -> dict:
    delta = {}
    if reasoning:
        delta["reasoning_content"] = reasoning
    if content:
        delta["content"] = content
    return delta


class BearerAuth:
    """Every route but PUBLIC_PATHS needs `Authorization: Bearer KEY` (compared in constant time)."""

    def __init__(self, app, api_key: str):
        self.app, self._expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                error = APIError(401, "missing or wrong API key: send `Authorization: Bearer KEY` with the key the "
                                 "server was started with (--api-key)", code="invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model: Model, settings: ServeSettings) -> Starlette:
    state = ServerState(model, settings)

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": state.created, "owned_by": "edgeinfer",
                "meta": {"context_length": model.context_length, "device": model.backend.name,
                         "precision": model.manifest.precision}}

    async def health(request: Request) -> JSONResponse:
        if state.scheduler.closed:
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model_detail(request: Request) -> JSONResponse:
        name = request.path_params["model_id"]
        if name != settings.model_id:
            return error_response(APIError(404, f"The model '{name[:100]}' does not exist: this server serves "
                                           f"'{settings.model_id}'", "model", "model_not_found"))
        return JSONResponse(model_card())

    async def stats(request: Request) -> JSONResponse:
        scheduler = state.scheduler
        return JSONResponse({"model": settings.model_id, "parallel": scheduler.parallel, "running": scheduler.running,
                             "queued": scheduler.queued, "queue_limit": scheduler.queue_limit,
                             "prefix_cache": state.cache.stats()})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: f"Invalid URL ({request.method} {request.url.path[:200]}): the routes are /v1/chat/completions, "
                        "/v1/completions, /v1/models and /health",
                   405: f"{request.method} is not allowed on {request.url.path[:200]}"}.get(exc.status_code, exc.detail)
        return error_response(APIError(exc.status_code, message, headers=exc.headers))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(APIError(500, f"internal error ({type(exc).__name__}): see the server log",
                                       type=SERVER_ERROR, code="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.begin_shutdown()  # when no signal started the stop
        state.workers.cancel_all()  # what the graceful period left (a client too slow to read its end)
        await asyncio.to_thread(state.workers.join, JOIN_TIMEOUT_S)

    routes = []
    for prefix in ("/v1", ""):  # llama-server answers both spellings
        routes += [
            Route(f"{prefix}/chat/completions", GenerationEndpoint(state, "chat"), methods=["POST"]),
            Route(f"{prefix}/completions", GenerationEndpoint(state, "completion"), methods=["POST"]),
            Route(f"{prefix}/models", models, methods=["GET"]),
            Route(f"{prefix}/models/{{model_id:path}}", model_detail, methods=["GET"]),
        ]
    routes += [Route("/health", health, methods=["GET"]), Route("/stats", stats, methods=["GET"])]
    middleware = [Middleware(BearerAuth, api_key=settings.api_key)] if settings.api_key else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.serve = state
    return app
