"""DeepSeek-R1's reply split as it streams: `reasoning_content` up to </think>, `content` after it.

The pieces of each part join to exactly what `chat.split_reasoning` returns for the whole text: a part's
leading whitespace is dropped and its trailing whitespace held until more text follows it.
"""

from __future__ import annotations

from ..chat import THINK_CLOSE, THINK_OPEN


class _Stripped:
    """Pieces of one part with the part's outer whitespace removed."""

    def __init__(self):
        self._started = False
        self._held = ""  # trailing whitespace, let out only when text follows

    def feed(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        body = text.rstrip()
        if not body:
            self._held += text
            return ""
        out, self._held = self._held + body, text[len(body):]
        return out


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of TEXT that begins MARKER (it may complete in the next piece)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ReasoningSplitter:
    """feed(piece) -> (reasoning, content) to send now. THINKING: the prompt opened <think> itself."""

    def __init__(self, thinking: bool):
        # None: not yet known whether the reply opens <think> itself (split_reasoning's rule: it starts with it).
        self._in_reasoning: bool | None = True if thinking else None
        self._pending = ""
        self._reasoning, self._content = _Stripped(), _Stripped()

    def feed(self, piece: str) -> tuple[str, str]:
        self._pending += piece
        reasoning = content = ""
        if self._in_reasoning is None:
            start = self._pending.lstrip()
            if len(start) < len(THINK_OPEN) and THINK_OPEN.startswith(start):
                return "", ""  # maybe "<thi" of "<think>": wait
            self._in_reasoning = start.startswith(THINK_OPEN)
            if self._in_reasoning:
                self._pending = start[len(THINK_OPEN):]
        if self._in_reasoning:
            end = self._pending.find(THINK_CLOSE)
            if end < 0:
                keep = _partial_suffix(self._pending, THINK_CLOSE)
                cut = len(self._pending) - keep
                reasoning, self._pending = self._reasoning.feed(self._pending[:cut]), self._pending[cut:]
                return reasoning, ""
            reasoning = self._reasoning.feed(self._pending[:end])
            self._pending, self._in_reasoning = self._pending[end + len(THINK_CLOSE):], False
        content, self._pending = self._content.feed(self._pending), ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What the held text still gives once the reply has ended."""
        if self._in_reasoning is None:  # shorter than "<think>": plain content
            self._in_reasoning = False
        if self._in_reasoning:
            reasoning, self._pending = self._reasoning.feed(self._pending), ""
            return reasoning, ""
        content, self._pending = self._content.feed(self._pending), ""
        return "", content
