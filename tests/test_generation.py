"""The generation loop against transformers, the in-place KV cache, and the low-level generator API."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import GenerationError, PackageError
from edgeinfer.sampler import GREEDY, SamplingParams

from .conftest import export_tiny, reference_model


@pytest.fixture(scope="module")
def fp32_model(qwen2_fp32):
    return edgeinfer.load(qwen2_fp32)


def test_greedy_tokens_equal_transformers_generate(fp32_model, qwen2_dir):
    import torch

    ref = reference_model(qwen2_dir)
    rng = np.random.default_rng(5)
    for length in (1, 7, 40):
        prompt = rng.integers(0, 256, size=length).tolist()
        with torch.no_grad():
            expected = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, min_new_tokens=32)
        gen = fp32_model.generator(GREEDY)
        gen.append(prompt)
        assert gen.extend(32) == expected[0, length:].tolist()


@pytest.fixture(scope="module")
def grouped_model(qwen2_dir, tmp_path_factory):
    """The fp32 tiny model with grouped attention's SH cache rows (cpu packages default to GroupQueryAttention's BNSH)."""
    return edgeinfer.load(export_tiny(qwen2_dir, tmp_path_factory.mktemp("grouped") / "pkg", precision="fp32", attention="grouped"))


def positions(cache: np.ndarray, part: slice) -> np.ndarray:
    """The cache's rows for positions PART: BNSH [1, kvh, context, D] or SH [context, kvh * D]."""
    return cache[:, :, part] if cache.ndim == 4 else cache[part]


@pytest.mark.parametrize("which", ["grouped", "gqa"])
def test_cache_is_written_in_place(which, fp32_model, grouped_model):
    model = grouped_model if which == "grouped" else fp32_model
    assert model.manifest.kv_cache["layout"] == ("SH" if which == "grouped" else "BNSH")
    gen = model.generator(GREEDY)
    before = [a.copy() for a in gen.runner.cache_arrays()]
    gen.append([1, 2, 3])
    gen.append([4])
    after = gen.runner.cache_arrays()
    written = 4 + model.manifest.kv_cache.get("spare_rows", 0)  # exact-speculation packages: the padding row too
    for old, new in zip(before, after):
        assert not np.array_equal(positions(old, slice(0, 4)), positions(new, slice(0, 4)))  # present landed in the buffer
        assert np.array_equal(positions(old, slice(written, None)), positions(new, slice(written, None)))  # nothing beyond


def test_grouped_attention_decodes_like_group_query_attention(fp32_model, grouped_model):
    """The two cache layouts and attention paths: the same logits over a prompt, chunked prefill and decode steps."""
    prompt = np.random.default_rng(3).integers(0, 256, size=50).tolist()
    grouped, gqa = grouped_model.generator(GREEDY), fp32_model.generator(GREEDY)
    grouped.prefill_chunk = 16  # prefill over a held past too
    for gen in (grouped, gqa):
        gen.append(prompt)
    for _ in range(8):
        np.testing.assert_allclose(grouped.logits, gqa.logits, atol=1e-4)
        token = int(np.argmax(gqa.logits))
        grouped.append([token])
        gqa.append([token])


def test_chunked_prefill_equals_one_shot(fp32_model):
    prompt = list(range(10, 110))
    one = fp32_model.generator(GREEDY)
    one.append(prompt)
    chunked = fp32_model.generator(GREEDY)
    chunked.prefill_chunk = 16
    chunked.append(prompt)
    np.testing.assert_allclose(one.logits, chunked.logits, atol=1e-4)


def test_rewind_regenerates_the_same_continuation(fp32_model):
    def continue_two(gen):
        tokens = [gen.next_token()]
        gen.append(tokens)
        return tokens + [gen.next_token()]

    gen = fp32_model.generator(GREEDY)
    gen.append([5, 6, 7])
    first = continue_two(gen)
    gen.rewind(2)  # forget the third prompt token and what followed, then feed it again
    gen.append([7])
    assert continue_two(gen) == first and gen.position == 4


def test_context_full_is_a_clear_error(fp32_model):
    gen = fp32_model.generator(GREEDY)
    with pytest.raises(GenerationError, match="context"):
        gen.append(list(range(200)) + list(range(57)))  # 257 > 256


def test_generation_stops_at_full_context(fp32_model):
    result = fp32_model.generate("x" * 250, max_new_tokens=50, sampling=GREEDY, raw=True, ignore_eos=True)
    assert result.finish_reason == "context"
    assert result.prompt_tokens + len(result.token_ids) == 256 + 1  # the last token is sampled, never fed


def test_out_of_vocabulary_ids_are_refused(fp32_model):
    gen = fp32_model.generator(GREEDY)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        gen.append([1, 272])
    with pytest.raises(GenerationError, match="empty"):
        gen.append([])


def test_generate_returns_text_ids_and_timings(fp32_model):
    result = fp32_model.generate("hello", max_new_tokens=8, sampling=GREEDY, raw=True, ignore_eos=True)
    assert len(result.token_ids) == 8 and result.finish_reason == "length"
    t = result.timings
    assert t.ttft_s >= t.prefill_s > 0 and t.new_tokens == 8 and t.decode_s > 0
    assert result.text == fp32_model.tokenizer.decode(result.token_ids)


def test_stream_pieces_join_to_the_text(fp32_model):
    pieces = list(fp32_model.stream("hi", max_new_tokens=12, sampling=GREEDY, raw=True, ignore_eos=True))
    result = fp32_model.generate("hi", max_new_tokens=12, sampling=GREEDY, raw=True, ignore_eos=True)
    assert "".join(pieces) == result.text


def test_seeded_sampling_reproduces(fp32_model):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=11)
    a = fp32_model.generate("abc", max_new_tokens=16, sampling=params, raw=True)
    b = fp32_model.generate("abc", max_new_tokens=16, sampling=params, raw=True)
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_refused(fp32_model, prompt):
    with pytest.raises(GenerationError, match="empty"):
        fp32_model.generate(prompt)


def test_prompt_longer_than_context_is_refused(fp32_model):
    with pytest.raises(GenerationError, match="context"):
        fp32_model.generate("y" * 300, raw=True)


def test_generators_on_one_model_are_thread_safe(fp32_model):
    prompts = [f"prompt {i}" for i in range(6)]
    expected = {p: fp32_model.generate(p, max_new_tokens=10, sampling=GREEDY, raw=True).token_ids for p in prompts}
    got, errors = {}, []

    def worker(p):
        try:
            got[p] = fp32_model.generate(p, max_new_tokens=10, sampling=GREEDY, raw=True).token_ids
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected


def test_requests_reuse_a_kept_runner_and_get_the_same_tokens(qwen2_fp32):
    """Runners kept between requests (as on a GPU) serve the next request exactly as a fresh one does,
    also after a longer request or a cancelled one left more of the cache written than the next one uses."""
    from edgeinfer.model import RunnerPool

    fresh = edgeinfer.load(qwen2_fp32)
    model = edgeinfer.load(qwen2_fp32)
    made, new_runner = [], model.engine.new_runner
    model.engine.new_runner = lambda: made.append(new_runner()) or made[-1]
    model._runners = RunnerPool(model.engine, keep=True)

    def tokens(m, prompt, n):
        return m.generate(prompt, max_new_tokens=n, sampling=GREEDY, raw=True, ignore_eos=True).token_ids

    long_first = tokens(model, "a much longer first request with many words", 40)
    assert long_first == tokens(fresh, "a much longer first request with many words", 40)
    cancelled = model.stream("cancelled midway", max_new_tokens=30, sampling=GREEDY, raw=True, ignore_eos=True)
    next(cancelled)
    cancelled.close()
    for prompt in ("hi", "abc def", "hi"):
        assert tokens(model, prompt, 12) == tokens(fresh, prompt, 12)
    assert len(made) == 1  # every request ran on the one runner


def test_runner_pool_keeps_runners_only_when_asked():
    from types import SimpleNamespace

    from edgeinfer.model import RunnerPool

    for keep in (True, False):
        pool = RunnerPool(SimpleNamespace(new_runner=object), keep=keep)
        first = pool.acquire()
        busy = pool.acquire()  # the first is still in use: a second runner
        assert busy is not first
        pool.release(first)
        assert (pool.acquire() is first) == keep


def test_deepseek_preset_generates_and_splits_reasoning(preset_pkg):
    model = edgeinfer.load(preset_pkg)
    result = model.generate("Hi", max_new_tokens=6, sampling=GREEDY)
    assert model.chat_format.opens_thinking
    assert result.reasoning == result.text.strip()  # no </think> within 6 random tokens: all reasoning
    assert model.default_sampling().temperature == 0.6 and model.default_sampling().top_p == 0.95


def test_package_for_another_target_is_refused(qwen2_fp32, tmp_path):
    import json
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(qwen2_fp32, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"] = "cuda"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="exported for cuda"):
        edgeinfer.load(copy, device="cpu")


def test_stop_string_cuts_the_text_and_never_streams_past_it(fp32_model):
    full = fp32_model.generate("stop me", max_new_tokens=24, sampling=GREEDY, raw=True, ignore_eos=True).text
    stop = full[5:8]
    stream = fp32_model.stream("stop me", 24, GREEDY, stop=(stop, "\x00never"), raw=True, ignore_eos=True)
    pieces = list(stream)
    result = stream.result
    assert result.text == full[: full.find(stop)] == "".join(pieces)
    assert result.finish_reason == "stop_string"


def test_text_stopper_holds_back_a_stop_split_across_pieces():
    from edgeinfer.tokenizer import TextStopper

    stopper = TextStopper(("</answer>",))
    out = [stopper.feed(p) for p in ("The answer is 4.</ans", "wer> and more")]
    assert "".join(out) == "The answer is 4." and stopper.stopped


def test_chat_session_keeps_history_within_the_context(preset_pkg):
    from edgeinfer.chat_session import ChatSession

    model = edgeinfer.load(preset_pkg)  # 256-token context
    session = ChatSession(model, GREEDY, max_new_tokens=16)
    for turn in range(6):
        "".join(session.send(f"message {turn}: " + "words " * 12))
        assert len(model.encode_prompt(session.history)) <= model.context_length
    assert session.history[-2]["content"].startswith("message 5")  # the newest turn is kept
    assert not any(m["content"].startswith("message 0") for m in session.history)  # the oldest went first
    with pytest.raises(GenerationError, match="does not fit"):
        "".join(session.send("x" * 400))


def test_keep_common_prefix_rewinds_to_what_the_prompt_shares(fp32_model):
    gen = fp32_model.generator(GREEDY)
    gen.append([1, 2, 3, 4, 5])
    assert gen.keep_common_prefix([1, 2, 3, 9, 9]) == 3 and gen.tokens == [1, 2, 3]
    assert gen.keep_common_prefix([1, 2, 3]) == 2  # the last prompt token runs again: its logits are needed
    assert gen.keep_common_prefix([7, 8]) == 0 and gen.position == 0


def test_a_kept_generator_gives_the_fresh_result_without_rerunning_the_prefix(fp32_model):
    first, second = "the first turn of a conversation", "the first turn of a conversation, and the second"
    gen = fp32_model.generator(GREEDY)
    fp32_model.generate(first, max_new_tokens=8, sampling=GREEDY, raw=True, generator=gen)
    again = fp32_model.generate(second, max_new_tokens=16, sampling=GREEDY, raw=True, ignore_eos=True, generator=gen)
    fresh = fp32_model.generate(second, max_new_tokens=16, sampling=GREEDY, raw=True, ignore_eos=True)
    assert again.token_ids == fresh.token_ids and fresh.cached_tokens == 0
    shared = len(fp32_model.encode_prompt(first, raw=True))
    assert again.cached_tokens == shared and again.timings.prompt_tokens == again.prompt_tokens - shared


def test_a_kept_generator_restarts_sampling_from_each_requests_seed(fp32_model):
    seeded = SamplingParams(temperature=1.0, seed=5)
    gen = fp32_model.generator(seeded)
    runs = [fp32_model.generate("abc", max_new_tokens=8, sampling=seeded, raw=True, generator=gen).token_ids
            for _ in range(2)]
    assert runs[0] == runs[1] == fp32_model.generate("abc", max_new_tokens=8, sampling=seeded, raw=True).token_ids


def test_chat_session_runs_only_the_new_turn(preset_pkg):
    from edgeinfer.chat_session import ChatSession

    session = ChatSession(edgeinfer.load(preset_pkg), GREEDY, max_new_tokens=8)
    "".join(session.send("the first message of the chat"))
    first = session.last_result
    "".join(session.send("and a second one"))
    assert session.last_result.cached_tokens >= first.prompt_tokens - 2  # all but the "<think>\n" its reply opened


def test_a_recycled_generators_runner_serves_the_next_generator(qwen2_fp32):
    from edgeinfer.model import RunnerPool

    model = edgeinfer.load(qwen2_fp32)
    model._runners = RunnerPool(model.engine, keep=True)  # as on a GPU
    first = model.generator(GREEDY)
    first.append([1, 2, 3])
    model.recycle(first)
    second = model.generator(GREEDY)
    assert second.runner is first.runner and second.position == 0
    second.append([1, 2, 3])
    np.testing.assert_array_equal(second.logits, model.generator(GREEDY).runner.forward([1, 2, 3], 0))
