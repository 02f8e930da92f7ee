"""The server's parts without a server: request checks, the streamed <think> split, the prefix cache, admission."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")

import edgeinfer  # noqa: E402
from edgeinfer.chat import split_reasoning  # noqa: E402
from edgeinfer.sampler import GREEDY, SamplingParams  # noqa: E402
from edgeinfer.serve.api_errors import APIError  # noqa: E402
from edgeinfer.generator import reusable_prefix  # noqa: E402
from edgeinfer.serve.prefix_cache import KeptCache, PrefixCache  # noqa: E402
from edgeinfer.serve.reasoning import ReasoningSplitter  # noqa: E402
from edgeinfer.serve.scheduler import Scheduler  # noqa: E402
from edgeinfer.serve.schema import parse_request  # noqa: E402

DEFAULTS = SamplingParams()
USER = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return parse_request({"messages": USER, **fields}, "chat", DEFAULTS)


def test_a_chat_request_reads_the_fields_people_rely_on():
    request = chat(model="x", max_completion_tokens=7, temperature=0, top_p=0.5, stop="##", seed=3, n=1,
                   stream=True, stream_options={"include_usage": True}, frequency_penalty=0, user="u")
    assert request.max_tokens == 7 and request.sampling.greedy and request.sampling.seed == 3
    assert request.stop == ("##",) and request.stream and request.include_usage
    assert chat(max_tokens=5, temperature=None).sampling.temperature == DEFAULTS.temperature  # null: absent


def test_messages_take_text_parts_and_the_developer_role():
    request = chat(messages=[{"role": "developer", "content": "be brief"},
                             {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                             {"role": "assistant", "content": "x", "reasoning_content": "dropped"}])
    assert request.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"},
                                {"role": "assistant", "content": "x"}]


def test_a_completion_prompt_is_text_or_token_ids():
    assert parse_request({"prompt": ["abc"]}, "completion", DEFAULTS).prompt == "abc"
    assert parse_request({"prompt": [1, 2, 3]}, "completion", DEFAULTS).prompt == [1, 2, 3]


@pytest.mark.parametrize("body,param,code", [
    ("[]", None, "invalid_type"),
    ({"messages": USER, "frobnicate": 1}, "frobnicate", "unknown_parameter"),
    ({}, "messages", "missing_required_parameter"),
    ({"messages": "hi"}, "messages", "invalid_type"),
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls", "unknown_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", "unsupported_value"),
    ({"messages": USER, "temperature": "hot"}, "temperature", "invalid_type"),
    ({"messages": USER, "temperature": -1}, "temperature", "invalid_value"),
    ({"messages": USER, "top_p": 2}, "top_p", "invalid_value"),
    ({"messages": USER, "max_tokens": 5.5}, "max_tokens", "invalid_type"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"messages": USER, "max_tokens": True}, "max_tokens", "invalid_type"),
    ({"messages": USER, "stream": "yes"}, "stream", "invalid_type"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"messages": USER, "n": 2}, "n", "unsupported_value"),
    ({"messages": USER, "stop": ["a", 1]}, "stop", "invalid_type"),
    ({"messages": USER, "stop": [""]}, "stop", "invalid_value"),
    ({"messages": USER, "frequency_penalty": 0.5}, "frequency_penalty", "unsupported_value"),
    ({"messages": USER, "tools": [{"type": "function"}]}, "tools", "unsupported_value"),
    ({"messages": USER, "seed": -4}, "seed", "invalid_value"),
])
def test_bad_chat_fields_name_the_field(body, param, code):
    with pytest.raises(APIError) as caught:
        parse_request(body if body != "[]" else [], "chat", DEFAULTS)
    error = caught.value.body()["error"]
    assert caught.value.status == 400 and error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]


@pytest.mark.parametrize("prompt", ["", [], [True], ["a", "b"], [[1], [2]], {"text": "x"}])
def test_bad_completion_prompts_are_refused(prompt):
    with pytest.raises(APIError) as caught:
        parse_request({"prompt": prompt}, "completion", DEFAULTS)
    assert caught.value.body()["error"]["param"] == "prompt"


def split_by_streaming(text: str, cuts: list[int], thinking: bool) -> tuple[str, str]:
    splitter, reasoning, content = ReasoningSplitter(thinking), "", ""
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    for start, end in zip(bounds, bounds[1:]):
        r, c = splitter.feed(text[start:end])
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<", "</", "think", ">", " ", "\n", "a", "b c", "é"]),
                max_size=12), st.lists(st.integers(0, 200), max_size=8), st.booleans())
def test_streamed_reasoning_joins_to_the_whole_reply_split(parts, cuts, thinking):
    text = "".join(parts)
    reply = split_reasoning(text, thinking)
    assert split_by_streaming(text, cuts, thinking) == (reply.reasoning, reply.answer)


@pytest.fixture(scope="module")
def tiny_model(preset_pkg):
    return edgeinfer.load(preset_pkg)


def kept(model, tokens: list[int]) -> KeptCache:
    generator = model.generator(GREEDY)
    generator.append(tokens)
    return KeptCache(generator)


def test_the_reusable_prefix_leaves_the_last_prompt_token_to_run():
    assert reusable_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert reusable_prefix([1, 2, 3], [1, 2, 3]) == 2  # its logits are needed: it runs again
    assert reusable_prefix([1, 2], [1, 2, 3, 4]) == 2
    assert reusable_prefix([], [1]) == 0


def test_the_prefix_cache_hands_out_the_longest_match(tiny_model):
    per_token = 100
    cache = PrefixCache(10**9, per_token, tiny_model.context_length, host_memory=True)
    a, b = list(range(40)), list(range(20)) + list(range(100, 130))
    cache.put(kept(tiny_model, a))
    cache.put(kept(tiny_model, b))
    assert cache.stats()["bytes"] == (40 + 50) * per_token
    taken = cache.take(list(range(30)) + [7])
    assert taken.generator.tokens == a and len(cache) == 1
    assert cache.take(list(range(200, 260))) is None  # nothing shared: a fresh generator is cheaper than a theft


def test_the_prefix_cache_drops_what_a_longer_entry_covers(tiny_model):
    dropped = []
    cache = PrefixCache(10**9, 1, tiny_model.context_length, host_memory=True, on_drop=dropped.append)
    short, longer, shortest = kept(tiny_model, list(range(30))), kept(tiny_model, list(range(50))), kept(tiny_model, list(range(20)))
    cache.put(short)
    cache.put(longer)  # covers the first
    assert len(cache) == 1
    cache.put(shortest)  # covered by the second: not kept
    assert len(cache) == 1 and cache.take(list(range(60))).generator.position == 50
    assert dropped == [short.generator, shortest.generator]  # given back (Model.recycle), not leaked


def test_the_prefix_cache_evicts_the_least_recently_used_beyond_its_budget(tiny_model):
    dropped = []
    cache = PrefixCache(budget_bytes=100, bytes_per_token=1, capacity=tiny_model.context_length, host_memory=True,
                        on_drop=dropped.append)
    first, second, third = (kept(tiny_model, [base + i for i in range(40)]) for base in (0, 50, 100))
    for entry in (first, second, third):
        cache.put(entry)
    assert len(cache) == 2 and cache.stats()["evictions"] == 1 and dropped == [first.generator]
    assert cache.take([i for i in range(40)]) is None  # the oldest went
    assert cache.take([50 + i for i in range(40)]) is second


def test_a_device_cache_costs_its_whole_capacity(tiny_model):
    cache = PrefixCache(10**9, 2, capacity=256, host_memory=False)
    cache.put(kept(tiny_model, list(range(20))))
    assert cache.stats()["bytes"] == 512


def test_a_kept_generator_continues_from_the_shared_prefix(tiny_model):
    prompt = tiny_model.encode_prompt("a question that is long enough to be worth keeping")
    fresh = tiny_model.generate(prompt_or_messages="a question that is long enough to be worth keeping",
                                max_new_tokens=12, sampling=GREEDY)
    generator = tiny_model.generator(GREEDY)
    generator.append(prompt[:-3] + [5, 6, 7, 8])  # an earlier request that went elsewhere after the shared start
    again = tiny_model.stream_ids(prompt, 12, GREEDY, generator=generator, thinking=True)
    assert "".join(again) == fresh.text
    assert again.result.cached_tokens == len(prompt) - 3 and again.result.timings.prompt_tokens == 3
    assert again.result.token_ids == fresh.token_ids and again.result.prompt_tokens == len(prompt)


def run(coroutine):
    return asyncio.run(coroutine)


def test_admission_runs_parallel_queues_then_refuses():
    async def scenario():
        scheduler = Scheduler(parallel=2, queue=1)
        running = [scheduler.admit(), scheduler.admit()]
        assert all(t.granted.done() for t in running)
        waiting = scheduler.admit()
        assert not waiting.granted.done()
        with pytest.raises(APIError) as caught:
            scheduler.admit()
        assert caught.value.status == 503 and 1 <= int(caught.value.headers["Retry-After"]) <= 60
        running[0].start()
        running[0].release()
        await asyncio.sleep(0)
        assert waiting.granted.done() and scheduler.running == 2 and scheduler.queued == 0
        for ticket in (running[1], waiting):
            ticket.release()
        assert scheduler.running == 0

    run(scenario())


def test_a_request_that_leaves_the_queue_frees_its_place():
    async def scenario():
        scheduler = Scheduler(parallel=1, queue=1)
        first, gone = scheduler.admit(), scheduler.admit()
        gone.release()  # its client disconnected while it waited
        assert scheduler.queued == 0
        later = scheduler.admit()
        first.release()
        assert later.granted.done()
        later.release()
        assert scheduler.running == 0

    run(scenario())


def test_closing_refuses_the_queue_and_newcomers():
    async def scenario():
        scheduler = Scheduler(parallel=1, queue=2)
        first, queued = scheduler.admit(), scheduler.admit()
        scheduler.close()
        assert isinstance(queued.granted.exception(), APIError)
        with pytest.raises(APIError):
            scheduler.admit()
        queued.release()
        first.release()
        assert scheduler.running == 0

    run(scenario())


def test_accepted_connections_send_small_writes_at_once():
    """Nagle's algorithm off (TCP_NODELAY): a streamed chunk must not wait for the client's delayed ACK."""
    import socket

    from edgeinfer.serve.server import listen

    async def scenario():
        sock = listen("127.0.0.1", 0)
        accepted = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        nodelay = await accepted
        writer.close()
        server.close()
        return nodelay

    assert run(scenario()) == 1


def test_listen_says_why_it_cannot():
    from edgeinfer.errors import EdgeInferError
    from edgeinfer.serve.server import listen

    taken = listen("127.0.0.1", 0)
    with pytest.raises(EdgeInferError, match="cannot listen on 127.0.0.1"):
        listen("127.0.0.1", taken.getsockname()[1])
    taken.close()
