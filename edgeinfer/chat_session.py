"""A multi-turn conversation that keeps within the context window by dropping the oldest turns.

The session keeps one generator: each turn's prompt begins with the previous turns, which its cache already
holds, so only the new message is run (until old turns are dropped and the prompt's start changes).
"""

from __future__ import annotations

from .errors import GenerationError
from .model import Model
from .sampler import SamplingParams


class ChatSession:
    def __init__(self, model: Model, sampling: SamplingParams | None = None, max_new_tokens: int = 512):
        self.model = model
        self.sampling = sampling
        self.max_new_tokens = max_new_tokens
        self.history: list[dict] = []
        self._generator = None  # made on the first turn, kept for the next ones
        self.last_result = None  # the latest turn's GenerationResult (timings, cached_tokens)

    def reset(self) -> None:
        self.history.clear()

    def _fit(self, messages: list[dict]) -> list[dict]:
        # Keep the newest turns whose prompt leaves room for the reply.
        budget = self.model.context_length - self.max_new_tokens
        while len(messages) > 1 and len(self.model.encode_prompt(messages)) > budget:
            messages = messages[2:] if len(messages) > 2 else messages[1:]
        if len(self.model.encode_prompt(messages)) > budget:
            raise GenerationError(
                f"this message alone does not fit the {self.model.context_length}-token context with room for "
                f"{self.max_new_tokens} new tokens: shorten it"
            )
        return messages

    def send(self, text: str):
        """Yield the reply's text pieces; the answer (without reasoning) joins the history."""
        messages = self._fit([*self.history, {"role": "user", "content": text}])
        if self._generator is None:
            self._generator = self.model.generator(self.sampling)
        stream = self.model.stream(messages, self.max_new_tokens, self.sampling, generator=self._generator)
        yield from stream
        result = self.last_result = stream.result
        self.history = [*messages, {"role": "assistant", "content": result.answer or result.text}]
