"""A request body checked field by field: types, ranges, unknown fields, before anything is encoded or run.

Each endpoint lists the fields it accepts and how to read each one. Fields OpenAI defines whose features
edgeinfer lacks are accepted only with their neutral value (`frequency_penalty: 0`, `logprobs: false`), so a
client that sends defaults works and one that relies on the feature is told it is missing. `null` counts as
absent, as in OpenAI's API. A field nobody defines is refused, as OpenAI does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SamplingError
from ..sampler import SamplingParams
from .api_errors import bad_request

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024  # the stopper holds back this many characters of text while it waits for a match
# OpenAI's roles, and "developer" as its newer name for "system".
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MESSAGE_FIELDS = {"role", "content", "name", "reasoning_content", "tool_call_id"}


@dataclass(frozen=True)
class GenerationRequest:
    """A chat or completion request whose fields all passed their checks; the prompt is not encoded yet."""

    endpoint: str  # "chat" or "completion"
    sampling: SamplingParams
    messages: list[dict] | None = None  # chat: role and string content each
    prompt: str | list[int] | None = None  # completion: text, or token ids
    max_tokens: int | None = None  # None: until the context is full
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    ignore_eos: bool = False  # llama-server's extension: generate exactly max_tokens


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _wrong_type(param: str, wanted: str, value) -> Exception:
    return bad_request(f"{param} must be {wanted}, got {_json_kind(value)}", param, "invalid_type")


def _text(value, param: str) -> str:
    if not isinstance(value, str):
        raise _wrong_type(param, "a string", value)
    return value


def _boolean(value, param: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(param, "true or false", value)
    return value


def _whole(value, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(param, "a whole number", value)
    return value


def _number(value, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(param, "a number", value)
    if not math.isfinite(value):
        raise bad_request(f"{param} must be a finite number", param, "invalid_value")
    return value


def _token_count(value, param: str) -> int:
    value = _whole(value, param)
    if value < 1:
        raise bad_request(f"{param} must be at least 1, got {value}", param, "invalid_value")
    return value


def _n(value, param: str) -> int:
    if _whole(value, param) != 1:
        raise bad_request("n must be 1: edgeinfer returns one choice per request, send more requests for more",
                          param, "unsupported_value")
    return 1


def _stop(value, param: str) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _wrong_type(param, "a string or an array of strings", value)
    if len(stops) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} "
                          "characters", param, "invalid_value")
    return tuple(stops)


def _stream_options(value, param: str) -> bool:
    if not isinstance(value, dict):
        raise _wrong_type(param, "an object", value)
    for key in value:
        if key != "include_usage":
            raise bad_request(f"Unrecognized argument supplied: {param}.{key}", f"{param}.{key}", "unknown_parameter")
    return _boolean(value.get("include_usage", False), f"{param}.include_usage")


def _neutral(allowed: Callable[[object], bool], why: str) -> Callable[[object, str], None]:
    """A field accepted only at its neutral value: the feature behind it does not exist here."""

    def check(value, param: str) -> None:
        if not allowed(value):
            raise bad_request(f"{param} {why}", param, "unsupported_value")

    return check


def _content(value, param: str) -> str:
    """A message's text: a string, or OpenAI's array of text parts (joined by newlines)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _wrong_type(param, "a string or an array of text parts", value)
    texts = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _wrong_type(where, "an object", part)
        if part.get("type") != "text":
            raise bad_request(f"{where} is of type {str(part.get('type'))[:40]!r}: this model reads text parts only",
                              where, "unsupported_value")
        if set(part) - {"type", "text"}:
            extra = sorted(set(part) - {"type", "text"})[0]
            raise bad_request(f"Unrecognized argument supplied: {where}.{extra}", f"{where}.{extra}", "unknown_parameter")
        texts.append(_text(part.get("text"), f"{where}.text"))
    return "\n".join(texts)


def _messages(value, param: str) -> list[dict]:
    if not isinstance(value, list):
        raise _wrong_type(param, "an array of messages", value)
    if not value:
        raise bad_request("messages is empty: send at least one user message", param, "invalid_value")
    messages = []
    for i, message in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object with role and content", message)
        for key in message:
            if key not in MESSAGE_FIELDS:
                detail = ": tool calls are not supported" if key == "tool_calls" else ""
                raise bad_request(f"Unrecognized argument supplied: {where}.{key}{detail}", f"{where}.{key}",
                                  "unknown_parameter")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}, got {str(role)[:40]!r}",
                              f"{where}.role", "invalid_value")
        if "content" not in message:
            raise bad_request(f"{where}.content is missing", f"{where}.content", "missing_required_parameter")
        for key in ("name", "tool_call_id", "reasoning_content"):  # read for their types, then left out:
            if message.get(key) is not None:  # templates drop a past turn's reasoning anyway
                _text(message[key], f"{where}.{key}")
        messages.append({"role": ROLES[role], "content": _content(message["content"], f"{where}.content")})
    return messages


def _prompt(value, param: str) -> str | list[int]:
    """A completion prompt: text, or token ids; a batch of one of either is unwrapped."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise bad_request("prompt is empty: send some text", param, "invalid_value")
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        raise bad_request("prompt holds several prompts: send one prompt per request", param, "unsupported_value")
    raise _wrong_type(param, "a string or a non-empty array of token ids", value)


# Fields both endpoints read, with what reads each.
_COMMON: dict[str, Callable] = {
    "model": _text,  # one model is served: any name is accepted, as llama-server does
    "max_tokens": _token_count,
    "temperature": _number, "top_p": _number, "top_k": _whole, "min_p": _number, "repetition_penalty": _number,
    "seed": _whole, "stop": _stop, "n": _n, "stream": _boolean, "stream_options": _stream_options,
    "ignore_eos": _boolean, "user": _text,
    "frequency_penalty": _neutral(lambda v: v == 0, "is not supported (only 0): use repetition_penalty"),
    "presence_penalty": _neutral(lambda v: v == 0, "is not supported (only 0): use repetition_penalty"),
    "logit_bias": _neutral(lambda v: v == {}, "is not supported (only {})"),
}
CHAT_FIELDS: dict[str, Callable] = {
    **_COMMON,
    "messages": _messages,
    "max_completion_tokens": _token_count,
    "logprobs": _neutral(lambda v: v is False, "is not supported (only false)"),
    "top_logprobs": _neutral(lambda v: v == 0, "is not supported (only 0)"),
    "response_format": _neutral(lambda v: v == {"type": "text"}, 'is not supported (only {"type": "text"})'),
    "tools": _neutral(lambda v: v == [], "are not supported (only [])"),
    "tool_choice": _neutral(lambda v: v == "none", 'is not supported (only "none")'),
    "parallel_tool_calls": _boolean,
}
COMPLETION_FIELDS: dict[str, Callable] = {
    **_COMMON,
    "prompt": _prompt,
    "echo": _neutral(lambda v: v is False, "is not supported (only false)"),
    "suffix": _neutral(lambda v: v == "", 'is not supported (only "")'),
    "best_of": _neutral(lambda v: v == 1, "is not supported (only 1)"),
    "logprobs": _neutral(lambda v: v == 0, "is not supported (only 0)"),
}
REQUIRED = {"chat": "messages", "completion": "prompt"}


def parse_request(body, endpoint: str, defaults: SamplingParams) -> GenerationRequest:
    """BODY (parsed JSON) as a request to ENDPOINT ("chat" or "completion"), or an APIError naming the field."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_json_kind(body)}", None, "invalid_type")
    fields = CHAT_FIELDS if endpoint == "chat" else COMPLETION_FIELDS
    for name in body:
        if name not in fields:
            raise bad_request(f"Unrecognized request argument supplied: {str(name)[:80]}", str(name)[:80],
                              "unknown_parameter")
    values = {name: fields[name](value, name) for name, value in body.items() if value is not None}
    required = REQUIRED[endpoint]
    if required not in values:
        raise bad_request(f"Missing required parameter: '{required}'", required, "missing_required_parameter")
    if "stream_options" in values and not values.get("stream"):
        raise bad_request("stream_options is only allowed when stream is true", "stream_options", "invalid_value")
    try:
        sampling = SamplingParams(
            temperature=values.get("temperature", defaults.temperature), top_k=values.get("top_k", defaults.top_k),
            top_p=values.get("top_p", defaults.top_p), min_p=values.get("min_p", defaults.min_p),
            repetition_penalty=values.get("repetition_penalty", defaults.repetition_penalty),
            seed=values.get("seed", defaults.seed),
        )
    except SamplingError as exc:  # its messages start with the parameter's name
        raise bad_request(str(exc), str(exc).split(" ", 1)[0], "invalid_value") from None
    return GenerationRequest(
        endpoint=endpoint, sampling=sampling, messages=values.get("messages"), prompt=values.get("prompt"),
        max_tokens=values.get("max_completion_tokens", values.get("max_tokens")), stop=values.get("stop", ()),
        stream=values.get("stream", False), include_usage=values.get("stream_options", False),
        ignore_eos=values.get("ignore_eos", False),
    )
