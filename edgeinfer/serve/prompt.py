"""A checked request's prompt, encoded and fitted to the model's context (or refused with a 400 saying why)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GenerationError
from ..model import Model
from .api_errors import bad_request
from .schema import GenerationRequest


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    max_new_tokens: int
    thinking: bool  # the prompt opened DeepSeek-R1's <think>: the reply starts with reasoning


def encode_prompt(model: Model, request: GenerationRequest) -> Prompt:
    param = "messages" if request.endpoint == "chat" else "prompt"
    try:
        if request.endpoint == "chat":
            ids, thinking = model.encode_prompt(request.messages), model.chat_format.opens_thinking
        elif isinstance(request.prompt, str):
            ids, thinking = model.encode_prompt(request.prompt, raw=True), False
        else:
            ids, thinking = list(request.prompt), False
            vocab = model.spec.vocab_size
            if (bad := next((t for t in ids if not 0 <= t < vocab), None)) is not None:
                raise bad_request(f"prompt holds token id {bad}, outside the vocabulary [0, {vocab})", param, "invalid_value")
    except GenerationError as exc:  # a template that refuses the messages, text that is not valid Unicode
        raise bad_request(str(exc), param, "invalid_value") from None
    context = model.context_length
    room = context - len(ids)
    if room < 1:
        raise bad_request(
            f"the prompt has {len(ids)} tokens and the model's context {context}, with room needed for at least one "
            "new token: shorten the prompt or start a new conversation", param, "context_length_exceeded")
    if request.max_tokens is not None and request.max_tokens > context:
        name = "max_tokens"
        raise bad_request(f"{name} {request.max_tokens} is more than the model's whole {context}-token context: "
                          f"ask for at most {room} with this prompt", name, "invalid_value")
    # Past the room left, generation stops at the context's end with finish_reason "length".
    return Prompt(ids, request.max_tokens or room, thinking)
