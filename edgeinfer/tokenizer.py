"""Text <-> token ids with the `tokenizers` library, and streaming detokenization that never splits UTF-8."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from .errors import GenerationError, PackageError, last_line

if TYPE_CHECKING:
    from .package import Package

MAX_TOKENIZER_BYTES = 64 << 20  # the largest real tokenizer.json files are ~30 MB (262k-token vocabularies)


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, config: dict, bos_token_id: int | None, add_bos: bool):
        self._tok = tokenizer
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        # A user who types "<|im_start|>" means the text, not the control token.
        self._plain.encode_special_tokens = True
        self.config = config
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_package(cls, package: "Package", bos_token_id: int | None, add_bos: bool) -> "TextTokenizer":
        tokenizer_file = package.file("tokenizer.json", "the tokenizer")
        config_file = package.file("tokenizer_config.json", "the tokenizer settings")
        for path in (tokenizer_file, config_file):
            if path.stat().st_size > MAX_TOKENIZER_BYTES:
                raise PackageError(f"{path} has {path.stat().st_size} bytes, more than any tokenizer needs: re-export the package")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            config = json.loads(config_file.read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError("tokenizer_config.json is not a JSON object")
        except Exception as exc:
            raise PackageError(f"{package.folder}: cannot read the tokenizer ({last_line(exc)}): re-export the package") from None
        return cls(tokenizer, config, bos_token_id, add_bos)

    def encode(self, text: str, parse_special: bool = True, add_bos: bool | None = None) -> list[int]:
        """Token ids of TEXT. With parse_special=False, special-token text is encoded as plain text."""
        if not isinstance(text, str):
            raise GenerationError(f"text must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates (e.g. from a JS or Windows app) have no UTF-8 form
            raise GenerationError(
                f"the text holds an unpaired surrogate {text[exc.start]!r} at index {exc.start}: pass valid Unicode"
            ) from None
        tok = self._tok if parse_special else self._plain
        ids = tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns token ids into text pieces as they arrive.

    Decodes a small window of recent tokens and emits only what is new once it ends in a whole character:
    a multi-byte character split across tokens is held back until its last byte arrives.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # tokens whose text has been emitted

    def feed(self, token_id: int) -> str:
        self._ids.append(token_id)
        done = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        if text.endswith("\ufffd") or len(text) <= len(done):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]

    def flush(self) -> str:
        """What is left when generation stops (a dangling partial character becomes U+FFFD)."""
        done = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(done) :]


class TextStopper:
    """Cuts streamed text at the first stop string, never letting any of it out.

    The last (longest stop - 1) characters are held back until they can no longer begin a stop string.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # everything let out so far
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
        else:
            cut = max(len(self.pending) - self.hold, 0)
            out, self.pending = self.pending[:cut], self.pending[cut:]
        self.text += out
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        self.text += out
        return out
