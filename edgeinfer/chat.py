"""Chat formatting: the package's Jinja template rendered as transformers does, plus DeepSeek-R1's conventions.

User text is encoded as plain text (special-token strings in it stay text); only the template's own
markup is parsed for special tokens.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import jinja2

from .errors import EdgeInferError, GenerationError, PackageError
from .template_sandbox import CHARS_PER_CONTEXT_TOKEN, Budget, BoundedSandbox, TemplateRefusal, refuse, render_limits
from .template_sandbox import template_refusal
from .tokenizer import TextTokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Private-use code points around a per-render random number mark where message contents go in the rendered
# template. The number keeps a template that writes private-use characters itself from forging a marker.
_MARK = "\ue000{nonce}.{index}\ue001"
_ROLES = ("system", "user", "assistant", "tool")
# The largest real chat templates (tool-calling ones) are ~30K characters; a megabyte-long one is an attack on
# the parser, not a format.
MAX_TEMPLATE_CHARS = 256 * 1024
# Where the caller does not say (an export's calibration prompts), bound renders as for a 32K-token context.
DEFAULT_CONTEXT_LENGTH = 32768


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


def chat_format_name(template: str | None) -> str:
    """Which conventions the generator applies on top of the template (DeepSeek-R1's <think> handling)."""
    if template and "<｜Assistant｜>" in template:
        return "deepseek-r1"
    if template and "<|im_start|>" in template:
        return "chatml"
    return "template" if template else "none"


def _environment() -> BoundedSandbox:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = template_refusal
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


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ChatFormat:
    def __init__(self, tokenizer: TextTokenizer, template: str | None, chat_format: str,
                 context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        # A render may write CHARS_PER_CONTEXT_TOKEN characters per context token, no more (see template_sandbox).
        self.max_chars = CHARS_PER_CONTEXT_TOKEN * context_length
        self.template = _compile(template) if template else None
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
        nonce = f"{secrets.randbelow(10**12):012d}"  # digits only: case filters (upper, title) leave them alone
        marked = [{**m, "content": _MARK.format(nonce=nonce, index=i)} for i, m in enumerate(messages)]
        rendered = self._render(messages=marked, add_generation_prompt=True, **{
            k: v for k, v in self.tokenizer.config.items() if k.endswith("_token") and isinstance(v, str)})
        if self.format == "deepseek-r1" and not rendered.rstrip().endswith(THINK_OPEN):
            rendered += THINK_OPEN + "\n"  # start the answer inside <think>, as DeepSeek recommends
        ids: list[int] = []
        # bos comes from the template text itself where it writes one; add it otherwise.
        for i, piece in enumerate(re.split(f"\ue000{nonce}\\.([0-9]+)\ue001", rendered)):
            if i % 2:
                if len(piece) > 9 or int(piece) >= len(contents):  # made by editing a marker, not by copying one
                    raise refuse(f"wrote a content marker for message {piece[:12]}, of {len(contents)}")
                ids += self.tokenizer.encode(contents[int(piece)], parse_special=False, add_bos=False)
            elif piece:
                ids += self.tokenizer.encode(piece, parse_special=True, add_bos=False)
        bos = self.tokenizer.bos_token_id
        if self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def _render(self, **variables) -> str:
        """The template's text for VARIABLES, streamed so a render is stopped as soon as it passes its bounds."""
        budget = Budget(self.max_chars)
        pieces, size = [], 0
        try:
            with render_limits(budget):
                chunks = self.template.generate(**variables)
                try:
                    for chunk in chunks:
                        size += len(chunk)
                        budget.fits(size, "the rendered prompt")
                        budget.tick()
                        pieces.append(chunk)
                finally:
                    chunks.close()
        except EdgeInferError:
            raise
        except TemplateRefusal as exc:
            raise GenerationError(f"the chat template refused these messages: {_one_line(exc)}") from None
        except Exception as exc:  # anything the template makes Python raise: OverflowError, RecursionError, SecurityError...
            raise refuse(f"failed ({type(exc).__name__}: {_one_line(exc)})") from None
        return "".join(pieces)


def _compile(template: str) -> jinja2.Template:
    if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
        raise PackageError(f"the package's chat template is not a string of at most {MAX_TEMPLATE_CHARS} characters: "
                           "fix or remove it and re-export")
    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateError as exc:
        raise PackageError(f"the package's chat template does not parse ({_one_line(exc)}): fix it in the source and re-export") from None
    except Exception as exc:  # RecursionError, MemoryError, SyntaxError from deeply nested or huge sources
        raise PackageError(f"the package's chat template cannot be compiled ({type(exc).__name__}: {_one_line(exc)}): "
                           "fix or remove it and re-export") from None
