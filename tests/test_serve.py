"""`edgeinfer serve` as a client sees it: a real server on a free loopback port, the unmodified `openai` client.

One server (tiny preset, --parallel 4, an API key, short read deadline, 1 MiB body limit) serves the module;
the signal tests start their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from edgeinfer.cli import main  # noqa: E402

from .conftest import export_tiny  # noqa: E402

KEY = "test-key-7f3a"
READ_TIMEOUT_S = 2
PROMPT = "Write a haiku about the sea."


class Server:
    """`edgeinfer serve PACKAGE --port 0 ARGS` in a subprocess, its log in a file, ready once /health answers."""

    def __init__(self, package: Path, log: Path, *args: str):
        self.log_path = log
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeinfer.cli", "serve", str(package), "--port", "0", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = self._wait_for_url()
        self.host, self.port = self.url.removeprefix("http://").split(":")
        self.port = int(self.port)
        deadline = time.monotonic() + 60
        while not self._healthy():
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if found := re.search(r"at (http://[0-9.]+:[0-9]+)", self.log()):
                return found.group(1)
            assert self.process.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"the server did not start:\n{self.log()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The tiny preset with a 4096-token context: room for long generations and over-context prompts."""
    return export_tiny("preset:tiny-qwen2", tmp_path_factory.mktemp("serve") / "tiny", context_length=4096)


@pytest.fixture(scope="module")
def server(package, tmp_path_factory):
    process = Server(package, tmp_path_factory.mktemp("serve-log") / "server.log", "--api-key", KEY,
                     "--parallel", "4", "--read-timeout", str(READ_TIMEOUT_S), "--max-body-mb", "1")
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.models.list().data[0].id


def headers() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def health(server) -> int:
    return httpx.get(f"{server.url}/health", timeout=10).status_code


def stats(server) -> dict:
    return httpx.get(f"{server.url}/stats", headers=headers(), timeout=10).json()


def run_json(package: Path, prompt: str, capsys, *extra: str) -> dict:
    assert main(["run", str(package), prompt, "--temperature", "0", "--max-new-tokens", "32", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def streamed_chat(client, model_id: str, prompt: str, **options) -> tuple[str, str, list]:
    """(reasoning, content, chunks) of a streamed chat completion."""
    chunks = list(client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                                 stream=True, **options))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return reasoning, content, chunks


# -- the openai client against `edgeinfer run` ------------------------------------------------------------------


def test_the_server_listens_on_loopback_by_default(server):
    assert server.host == "127.0.0.1"


def test_models_lists_the_served_model(client, package):
    listed = client.models.list().data
    assert [m.id for m in listed] == [package.name]
    assert client.models.retrieve(package.name).id == package.name


def test_chat_equals_edgeinfer_run(client, model_id, package, capsys):
    expected = run_json(package, PROMPT, capsys)
    reply = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": PROMPT}],
                                           temperature=0, max_tokens=32)
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content) == (expected["reasoning"], expected["answer"])
    assert reply.usage.completion_tokens == len(expected["token_ids"])
    assert reply.usage.prompt_tokens == expected["prompt_tokens"]
    assert reply.choices[0].finish_reason == {"length": "length", "eos": "stop"}[expected["finish_reason"]]
    timings = reply.model_extra["timings"]
    assert timings["predicted_n"] == len(expected["token_ids"]) and timings["prompt_per_second"] > 0


def test_streamed_chat_equals_edgeinfer_run(client, model_id, package, capsys):
    expected = run_json(package, PROMPT + " Again.", capsys)
    reasoning, content, chunks = streamed_chat(client, model_id, PROMPT + " Again.", temperature=0, max_tokens=32,
                                               stream_options={"include_usage": True})
    assert (reasoning, content) == (expected["reasoning"], expected["answer"])
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length") and "timings" in chunks[-2].model_extra
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected["token_ids"])


def test_completion_equals_edgeinfer_run_raw(client, model_id, package, capsys):
    expected = run_json(package, "Once upon a time", capsys, "--raw")
    reply = client.completions.create(model=model_id, prompt="Once upon a time", temperature=0, max_tokens=32)
    assert reply.choices[0].text == expected["text"]
    pieces = client.completions.create(model=model_id, prompt="Once upon a time", temperature=0, max_tokens=32,
                                       stream=True)
    assert "".join(c.choices[0].text for c in pieces) == expected["text"]


def test_stop_strings_and_seeds(client, model_id):
    ask = dict(model=model_id, prompt="The list: a, b, c,", max_tokens=24)
    greedy = client.completions.create(**ask, temperature=0).choices[0].text
    stop = greedy[5:7]
    cut = client.completions.create(**ask, temperature=0, stop=[stop]).choices[0]
    assert cut.text == greedy[: greedy.index(stop)] and cut.finish_reason == "stop"
    sampled = [client.completions.create(**ask, temperature=1.0, seed=11).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]


# -- concurrency ------------------------------------------------------------------------------------------------


PROMPTS = ["Hi", "Name three rivers in Europe.", "What is 17 * 23? Think it through.", "Tell me a story " * 6]


async def _stream_text(client, model_id: str, prompt: str, **options) -> str:
    stream = await client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                                  stream=True, temperature=0, **options)
    text = []
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            text.append((getattr(delta, "reasoning_content", None) or "") + (delta.content or ""))
    return "".join(text)


def test_16_streaming_clients_get_the_single_client_text(server, model_id):
    async def scenario():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        single = [await _stream_text(client, model_id, p, max_tokens=24) for p in PROMPTS]

        async def one_client(i: int) -> list[tuple[int, str]]:
            return [(k := (i + j) % len(PROMPTS), await _stream_text(client, model_id, PROMPTS[k], max_tokens=24))
                    for j in range(10)]

        results = await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(16))), timeout=300)
        await client.close()
        return single, [r for per_client in results for r in per_client]

    single, results = asyncio.run(scenario())  # any 4xx/5xx would have raised
    assert len(results) == 160
    assert all(text == single[k] for k, text in results)


def test_64_at_once_overflow_gets_503_and_nothing_hangs(server, model_id):
    async def one(client) -> int:
        try:
            await _stream_text(client, model_id, "Count slowly.", max_tokens=240, extra_body={"ignore_eos": True})
            return 200
        except openai.APIStatusError as error:
            retry_after = int(error.response.headers["Retry-After"])
            assert 1 <= retry_after <= 60 and error.body["code"] == "overloaded"
            return error.status_code

    async def scenario():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        statuses = await asyncio.wait_for(asyncio.gather(*(one(client) for _ in range(64))), timeout=300)
        await client.close()
        return statuses

    statuses = asyncio.run(scenario())
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 1 and statuses.count(200) >= 4 + 16  # the slots and the queue were all used
    after = stats(server)
    assert (after["running"], after["queued"]) == (0, 0)


def test_a_client_that_leaves_cancels_its_generation(server, client, model_id):
    prompt = "A request that is abandoned after two chunks, far from its end."
    stream = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                            stream=True, max_tokens=4000, temperature=0, extra_body={"ignore_eos": True})
    iterator = iter(stream)
    next(iterator), next(iterator)
    stream.close()
    deadline = time.monotonic() + 10
    while stats(server)["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(server)["running"] == 0
    # Its cache was dropped, not kept: the same prompt again finds nothing cached.
    again = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}], max_tokens=1)
    assert again.usage.prompt_tokens_details.cached_tokens == 0


def test_a_client_that_leaves_the_queue_frees_its_place(server, client, model_id):
    long = dict(model=model_id, stream=True, max_tokens=4000, temperature=0, extra_body={"ignore_eos": True})
    running = [client.chat.completions.create(messages=[{"role": "user", "content": f"long {i}"}], **long)
               for i in range(4)]
    for stream in running:  # each has its first chunk: all four slots are taken
        next(iter(stream))
    with pytest.raises(httpx.ReadTimeout):  # waits in the queue, then gives up
        httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 4}, headers=headers(),
                   timeout=httpx.Timeout(10, read=0.5))
    deadline = time.monotonic() + 10
    while stats(server)["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (stats(server)["running"], stats(server)["queued"]) == (4, 0)
    for stream in running:
        stream.close()


# -- prompt-prefix reuse ----------------------------------------------------------------------------------------


def test_a_second_chat_turn_reuses_the_first_turns_cache(server, client, model_id):
    first = [{"role": "user", "content": "Tell me about the long history of the city of Lyon and its bridges."}]
    one = client.chat.completions.create(model=model_id, messages=first, temperature=0, max_tokens=16)
    assert one.usage.prompt_tokens_details.cached_tokens == 0
    hits = stats(server)["prefix_cache"]["hits"]
    second = [*first, {"role": "assistant", "content": one.choices[0].message.content},
              {"role": "user", "content": "And Marseille?"}]
    two = client.chat.completions.create(model=model_id, messages=second, temperature=0, max_tokens=16)
    cached = two.usage.prompt_tokens_details.cached_tokens
    assert cached == one.usage.prompt_tokens - 2  # all of turn one's prompt but the "<think>\n" that opened its reply
    timings = two.model_extra["timings"]  # prefill ran over the new tokens only
    assert timings["cache_n"] == cached and timings["prompt_n"] == two.usage.prompt_tokens - cached
    assert stats(server)["prefix_cache"]["hits"] == hits + 1


# -- bad input: a 4xx in OpenAI's error shape, and the server goes on -------------------------------------------


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert code is None or error["code"] == code
    return error


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body,param,code", [
    (b'{"messages": [{"role": "user", "content": "hi"}', None, "invalid_json"),
    (b"\xff\xfe not json", None, "invalid_json"),
    (b"[" * 100000, None, "invalid_json"),
    (json.dumps({"messages": "hi"}).encode(), "messages", "invalid_type"),
    (json.dumps({"messages": USER, "temperature": "warm"}).encode(), "temperature", "invalid_type"),
    (json.dumps({"messages": USER, "max_tokens": "100"}).encode(), "max_tokens", "invalid_type"),
    (json.dumps({"messages": USER, "stream": 1}).encode(), "stream", "invalid_type"),
    (json.dumps({"messages": USER, "best_model": True}).encode(), "best_model", "unknown_parameter"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode(), "messages", "context_length_exceeded"),
    (json.dumps({"messages": USER, "max_tokens": 10**12}).encode(), "max_tokens", "invalid_value"),
    (json.dumps({"messages": USER, "max_tokens": -1}).encode(), "max_tokens", "invalid_value"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None, "invalid_json"),
], ids=["truncated-json", "not-utf8", "nested-100k", "messages-string", "temperature-string", "max-tokens-string",
        "stream-number", "unknown-field", "prompt-over-context", "max-tokens-1e12", "max-tokens-negative", "nan"])
def test_bad_input_gets_a_400_and_the_server_goes_on(server, body, param, code):
    response = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers(), timeout=30)
    assert assert_openai_error(response, 400, code)["param"] == param
    assert health(server) == 200


def test_a_completion_prompt_over_the_context_gets_a_400(server):
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "word " * 2000}, headers=headers(), timeout=30)
    assert_openai_error(response, 400, "context_length_exceeded")
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": [1, 2, 10**6]}, headers=headers(), timeout=30)
    assert_openai_error(response, 400, "invalid_value")
    assert health(server) == 200


def test_unknown_routes_and_methods_answer_in_openai_shape(server):
    assert_openai_error(httpx.get(f"{server.url}/v1/engines", headers=headers()), 404)
    assert_openai_error(httpx.get(f"{server.url}/v1/chat/completions", headers=headers()), 405)
    assert_openai_error(httpx.get(f"{server.url}/v1/models/other-model", headers=headers()), 404, "model_not_found")


def test_the_api_key_guards_every_route_but_health(server):
    for key in (None, "wrong"):
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        assert_openai_error(httpx.get(f"{server.url}/v1/models", headers=auth), 401, "invalid_api_key")
        assert_openai_error(httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER}, headers=auth),
                            401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def raw_request(server, head: bytes, body: bytes = b"", wait_s: float = 10) -> tuple[int, dict]:
    """Send HEAD (+ BODY) on a plain socket, send nothing more, and read the whole response."""
    with socket.create_connection((server.host, server.port), timeout=wait_s) as sock:
        sock.sendall(head + body)
        return read_response(sock, wait_s)


def read_response(sock: socket.socket, wait_s: float) -> tuple[int, dict]:
    data = b""
    sock.settimeout(wait_s)
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def head(declared: str, path: str = "/v1/chat/completions") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
            f"{declared}\r\nConnection: close\r\n\r\n").encode()


def test_a_100_mb_body_gets_a_413_without_being_read(server):
    status, payload = raw_request(server, head("Content-Length: 104857600"))
    assert status == 413 and payload["error"]["code"] == "request_too_large"
    assert health(server) == 200


def test_a_chunked_body_past_the_limit_gets_a_413(server):
    size = (1 << 20) + 1  # one byte past --max-body-mb 1: the server has read all that was sent when it answers
    status, payload = raw_request(server, head("Transfer-Encoding: chunked"), f"{size:x}\r\n".encode() + b"x" * size)
    assert status == 413 and payload["error"]["code"] == "request_too_large"
    assert health(server) == 200


def test_a_slowloris_client_gets_a_408_while_others_are_served(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for i in range(40):  # one header line every 0.25 s, until the server answers
            if select.select([sock], [], [], 0.25)[0]:
                break
            sock.sendall(b"X-Slow-%d: y\r\n" % i)
            assert health(server) == 200
        status, payload = read_response(sock, 10)
    assert status == 408 and payload["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < READ_TIMEOUT_S + 3
    assert health(server) == 200


def test_a_body_that_stalls_gets_a_408(server):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(head("Content-Length: 200") + b'{"messages": [')
        status, payload = read_response(sock, READ_TIMEOUT_S + 10)
    assert status == 408 and payload["error"]["code"] == "request_timeout"
    assert health(server) == 200


# -- stopping ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_within_its_bound_and_exits_0(package, tmp_path, sig):
    server = Server(package, tmp_path / "server.log", "--parallel", "1", "--shutdown-timeout", "1")
    running_ended = threading.Event()
    seen_first_chunk = threading.Event()
    events: list[str] = []

    def long_stream():
        body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 4000, "ignore_eos": True,
                "stream": True}
        try:
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if line:
                        events.append(line)
                    seen_first_chunk.set()
        except httpx.HTTPError:
            pass  # cancelled by the stop: the connection ends mid-stream
        running_ended.set()

    threading.Thread(target=long_stream, daemon=True).start()
    assert seen_first_chunk.wait(30)
    queued: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: queued.append(httpx.post(
        f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 4}, timeout=60)), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/stats").json()["queued"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert server.stop(sig, timeout=30) == 0, server.log()
    assert time.monotonic() - started < 1 + 10  # the graceful second, then the current step and the threads
    waiter.join(10)
    if queued:  # the queued request was refused, not left hanging (unless the long one ended first)
        assert queued[0].status_code in (200, 503)
        if queued[0].status_code == 503:
            assert queued[0].json()["error"]["code"] == "shutting_down"
    assert running_ended.wait(10)
    # The running stream ended as a stream does: finished, or told why it stopped.
    assert events[-1] == "data: [DONE]" and ("shutting_down" in events[-2] or '"finish_reason":"length"' in events[-2])
    assert "Traceback" not in server.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)
