"""OpenAI's response objects (chat.completion, text_completion, their stream chunks) built from a generation.

Beside OpenAI's fields: `reasoning_content` (DeepSeek's API: the text inside <think>) and `timings`
(llama-server's per-request figures; `predicted_per_second` is edgeinfer's decode rate, tokens after the first
over the time from the first to the last).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from ..model import GenerationResult

# edgeinfer's reasons -> OpenAI's: a stop string counts as "stop", a full context as "length".
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "length": "length", "context": "length"}


@dataclass(frozen=True)
class Envelope:
    """What every object of one response repeats."""

    kind: str  # "chat" or "completion"
    model: str
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self, object_name: str) -> dict:
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        return {"id": f"{prefix}-{self.id}", "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": None}


def usage(result: GenerationResult) -> dict:
    completion = len(result.token_ids)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens}}


def timings(result: GenerationResult) -> dict:
    t = result.timings
    per_token_ms = lambda seconds, count: seconds * 1000 / count if count else 0.0  # noqa: E731
    decoded = max(t.new_tokens - 1, 0)
    return {
        "cache_n": result.cached_tokens,
        "prompt_n": t.prompt_tokens, "prompt_ms": t.prefill_s * 1000,
        "prompt_per_token_ms": per_token_ms(t.prefill_s, t.prompt_tokens), "prompt_per_second": t.prefill_tokens_per_s,
        "predicted_n": t.new_tokens, "predicted_ms": t.decode_s * 1000,
        "predicted_per_token_ms": per_token_ms(t.decode_s, decoded), "predicted_per_second": t.decode_tokens_per_s,
        "ttft_ms": t.ttft_s * 1000,
    }


def chat_completion(envelope: Envelope, result: GenerationResult, thinking: bool) -> dict:
    message = {"role": "assistant", "content": result.answer}
    if thinking or result.reasoning:
        message["reasoning_content"] = result.reasoning
    return {
        **envelope.head("chat.completion"),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": FINISH_REASONS[result.finish_reason]}],
        "usage": usage(result), "timings": timings(result),
    }


def text_completion(envelope: Envelope, result: GenerationResult) -> dict:
    return {
        **envelope.head("text_completion"),
        "choices": [{"index": 0, "text": result.text, "logprobs": None,
                     "finish_reason": FINISH_REASONS[result.finish_reason]}],
        "usage": usage(result), "timings": timings(result),
    }


def chat_chunk(envelope: Envelope, delta: dict, finish_reason: str | None = None, with_usage: bool = False) -> dict:
    chunk = {**envelope.head("chat.completion.chunk"),
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        chunk["usage"] = None  # OpenAI: null on every chunk but the last, when include_usage asked for counts
    return chunk


def completion_chunk(envelope: Envelope, text: str, finish_reason: str | None = None, with_usage: bool = False) -> dict:
    chunk = {**envelope.head("text_completion"),
             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        chunk["usage"] = None
    return chunk


def final_chunks(envelope: Envelope, result: GenerationResult, include_usage: bool) -> list[dict]:
    """The chunk carrying finish_reason and timings, then (include_usage) one with the counts and no choices."""
    reason = FINISH_REASONS[result.finish_reason]
    if envelope.kind == "chat":
        last = chat_chunk(envelope, {}, reason, include_usage)
    else:
        last = completion_chunk(envelope, "", reason, include_usage)
    last["timings"] = timings(result)
    chunks = [last]
    if include_usage:
        object_name = "chat.completion.chunk" if envelope.kind == "chat" else "text_completion"
        chunks.append({**envelope.head(object_name), "choices": [], "usage": usage(result)})
    return chunks
