"""Chat formatting: the package's Jinja template rendered as transformers does, plus DeepSeek-R1's conventions.

User text is encoded as plain text (special-token strings in it stay text); only the template's own
markup is parsed for special tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import GenerationError, PackageError
from .tokenizer import TextTokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Private-use code points mark where message contents go in the rendered template.
_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("\ue000(\\d+)\ue001")
_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Reply:
    """A generated reply split DeepSeek-R1 style: the reasoning inside <think>...</think> and the answer after."""

    raw: str
    reasoning: str
    answer: str


def split_reasoning(text: str, prompt_opened_think: bool) -> Reply:
    body = text
    if not prompt_opened_think and body.lstrip().startswith(THINK_OPEN):
        body, prompt_opened_think = body.lstrip()[len(THINK_OPEN) :], True
    if prompt_opened_think:
        if THINK_CLOSE in body:
            reasoning, answer = body.split(THINK_CLOSE, 1)
            return Reply(text, reasoning.strip(), answer.strip())
        return Reply(text, body.strip(), "")  # stopped while still thinking
    return Reply(text, "", text.strip())


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def normalize_messages(prompt_or_messages) -> list[dict]:
    if isinstance(prompt_or_messages, str):
        messages = [{"role": "user", "content": prompt_or_messages}]
    elif isinstance(prompt_or_messages, list):
        messages = prompt_or_messages
    else:
        raise GenerationError("prompt must be a string or a list of {'role', 'content'} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise GenerationError(
                f"message {i} must be a dict with role in {_ROLES} and string content, got {str(m)[:80]!r}"
            )
    if not messages:
        raise GenerationError("the message list is empty: pass at least one user message")
    return messages


class ChatFormat:
    def __init__(self, tokenizer: TextTokenizer, template: str | None, chat_format: str):
        self.tokenizer = tokenizer
        try:
            self.template = _environment().from_string(template) if template else None
        except jinja2.exceptions.TemplateError as exc:
            raise PackageError(f"the package's chat template does not parse ({exc}): fix it in the source and re-export") from None
        self.format = chat_format

    @property
    def opens_thinking(self) -> bool:
        return self.format == "deepseek-r1"

    def prepare(self, messages: list[dict]) -> list[dict]:
        if self.format == "deepseek-r1":
            # DeepSeek-R1 is tuned without a system prompt: fold it into the first user turn.
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            messages = [m for m in messages if m["role"] != "system"]
            if system:
                first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
                if first is None:
                    messages.insert(0, {"role": "user", "content": system})
                else:
                    messages[first] = {"role": "user", "content": f"{system}\n\n{messages[first]['content']}"}
        return messages

    def encode(self, prompt_or_messages) -> list[int]:
        """Token ids of the conversation, ready for the assistant's turn."""
        messages = self.prepare(normalize_messages(prompt_or_messages))
        if self.template is None:
            text = "\n".join(m["content"] for m in messages)
            return self.tokenizer.encode(text, parse_special=False)
        contents = [m["content"].replace("\ue000", "").replace("\ue001", "") for m in messages]
        marked = [{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)]
        config = self.tokenizer.config
        try:
            rendered = self.template.render(
                messages=marked, add_generation_prompt=True,
                **{k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)},
            )
        except jinja2.exceptions.TemplateError as exc:
            raise GenerationError(f"the chat template refused these messages: {exc}") from None
        if self.format == "deepseek-r1" and not rendered.rstrip().endswith(THINK_OPEN):
            rendered += THINK_OPEN + "\n"  # start the answer inside <think>, as DeepSeek recommends
        ids: list[int] = []
        # bos comes from the template text itself where it writes one; add it otherwise.
        for i, piece in enumerate(_MARK_RE.split(rendered)):
            if i % 2:
                ids += self.tokenizer.encode(contents[int(piece)], parse_special=False, add_bos=False)
            elif piece:
                ids += self.tokenizer.encode(piece, parse_special=True, add_bos=False)
        bos = self.tokenizer.bos_token_id
        if self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids
