"""Rebuild the tokenizer a GGUF file describes as Hugging Face `tokenizers` files.

A GGUF has no tokenizer.json. llama.cpp stores the vocabulary, the merges, a type per token and the
special ids as metadata, and names its pre-tokenizer (`tokenizer.ggml.pre`) instead of storing the
regex, which is compiled into llama.cpp. We turn those fields back into a tokenizer.json the way
transformers' GGUF loader does, so an exported package tokenizes with `tokenizers` alone:

    files = tokenizer_from_gguf(gguf.GGUFReader("model.gguf"))
    Tokenizer.from_str(files.tokenizer_json)

Two tokenizer models are covered: "gpt2" (byte-level BPE: Qwen2, Llama 3, GPT-2) and "llama"
(sentencepiece-style BPE with byte fallback: Llama 2, Mistral). Anything else raises SourceError.
"""

from __future__ import annotations

import json
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..errors import SourceError
from .byte_level import bytes_to_unicode
from .sources import TokenizerFiles

KEY = gguf.Keys.Tokenizer
TYPE = gguf.TokenType  # NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6

# The split each byte-level vocabulary's merges were learned with, by `tokenizer.ggml.pre`. The
# regexes are the originals from the models' tokenizer.json, which transformers also uses; llama.cpp
# runs hand-expanded equivalents of the same ones (src/llama-vocab.cpp). None means GPT-2's own
# split, which `pre_tokenizers.ByteLevel(use_regex=True)` has built in.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# OpenAI's o200k split (Phi-4-mini, Llama 4): case-aware words with the contraction as a suffix, digits in threes.
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL_SPLITS: dict[str, str | None] = {
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    # llama.cpp's "default" adds digit splits of its own; transformers (our reference) and the
    # original GPT-2 tokenizer.json both use the plain GPT-2 split.
    "gpt-4o": _GPT4O_SPLIT,
    "llama4": _GPT4O_SPLIT,
    "default": None,
    "gpt2": None,
    "gpt-2": None,
}

# Vocabularies whose words found whole in the vocabulary skip the merges (tokenizer.json's "ignore_merges",
# llama.cpp's ignore_merges for its LLAMA3 pre-tokenizer type): " Việt" is one Llama 3 token, not three.
_IGNORE_MERGES = ("llama-bpe", "llama3", "llama-v3", "falcon3")

# Gemma's sentencepiece vocabulary adds no prefix space and keeps runs of spaces as tokens; no reference
# tokenization of it is at hand to check a rebuild against, so refuse it rather than tokenize it wrongly.
# (Phi-3's is a plain "llama" one: llama.cpp's reference cases for it pass, tests/test_gguf_tokenizer.py.)
_SENTENCEPIECE_NOT_SUPPORTED = ("gemma", "gemma2", "gemma3", "gemma4")


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> TokenizerFiles:
    """Convert the tokenizer stored in a GGUF's metadata into tokenizer.json text and its settings.

    eos_token_ids lists tokenizer.ggml.eos_token_id, then the eot/eom ids when the file sets them;
    special_tokens maps the roles bos/eos/pad/unk the file sets to their token text.
    """
    kind = _field(reader, KEY.MODEL)
    if kind is None:
        raise SourceError("the GGUF has no tokenizer.ggml.model: export from a folder that has tokenizer.json")
    tokens = _token_list(reader)
    types = _field(reader, KEY.TOKEN_TYPE) or [TYPE.NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise SourceError(f"the GGUF lists {len(tokens)} tokens but {len(types)} token types: re-convert the file")
    ids = _special_ids(reader, len(tokens))

    if kind == "gpt2":
        tokenizer = _byte_level_tokenizer(reader, tokens, types)
        add_bos = bool(_field(reader, KEY.ADD_BOS, False))
    elif kind == "llama":
        tokenizer = _sentencepiece_tokenizer(reader, tokens, types, ids.get("unk"))
        # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
        add_bos = bool(_field(reader, KEY.ADD_BOS, True))
    else:
        raise SourceError(
            f"GGUF tokenizer type {kind!r} is not supported (only 'gpt2' and 'llama'): "
            "export from a folder that has tokenizer.json"
        )
    _add_typed_tokens(tokenizer, tokens, types)
    add_eos = bool(_field(reader, KEY.ADD_EOS, False))
    tokenizer_json = json.loads(tokenizer.to_str())
    tokenizer_json["post_processor"] = _bos_eos_template(
        tokens, ids.get("bos") if add_bos else None, ids.get("eos") if add_eos else None
    )

    eos_ids = list(dict.fromkeys(ids[name] for name in ("eos", "eot", "eom") if name in ids))
    return TokenizerFiles(
        tokenizer_json=json.dumps(tokenizer_json, ensure_ascii=False),
        chat_template=_field(reader, KEY.CHAT_TEMPLATE),
        bos_token_id=ids.get("bos"),
        eos_token_ids=eos_ids,
        add_bos_token=add_bos,
        special_tokens={role: tokens[ids[role]] for role in ("bos", "eos", "pad", "unk") if role in ids},
    )


# --- reading GGUF fields -------------------------------------------------------------------------


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    if field is None:
        return default
    try:
        return field.contents()
    except UnicodeDecodeError as error:
        raise SourceError(f"GGUF field {key} is not valid UTF-8 ({error}): re-convert the file") from None


def _token_list(reader: gguf.GGUFReader) -> list[str]:
    tokens = _field(reader, KEY.LIST)
    if not tokens:
        raise SourceError("the GGUF has no tokenizer.ggml.tokens: re-convert it with llama.cpp's converter")
    return tokens


def _special_ids(reader: gguf.GGUFReader, vocab_size: int) -> dict[str, int]:
    """bos/eos/eot/eom/pad/unk -> id, for the ones the file sets."""
    keys = {"bos": KEY.BOS_ID, "eos": KEY.EOS_ID, "eot": KEY.EOT_ID, "eom": KEY.EOM_ID}
    keys |= {"pad": KEY.PAD_ID, "unk": KEY.UNK_ID}
    ids = {}
    for name, key in keys.items():
        value = _field(reader, key)
        if value is None:
            continue
        if not 0 <= value < vocab_size:
            raise SourceError(f"GGUF {key} is {value}, outside the {vocab_size}-token vocabulary: re-convert the file")
        ids[name] = int(value)
    return ids


# --- the two tokenizer models --------------------------------------------------------------------


def _byte_level_tokenizer(reader: gguf.GGUFReader, tokens: list[str], types: list[int]) -> Tokenizer:
    pre = _field(reader, KEY.PRE, "default")
    if pre not in BYTE_LEVEL_SPLITS:
        raise SourceError(
            f"GGUF pre-tokenizer {pre!r} is not supported (known: {', '.join(sorted(BYTE_LEVEL_SPLITS))}): "
            "export from a folder that has tokenizer.json"
        )
    # Regular tokens are stored in GPT-2's byte alphabet; added ones (control, user-defined) as the
    # plain text they match. Respell any regular token outside the alphabet, as transformers does.
    alphabet = bytes_to_unicode()
    letters = set(alphabet.values())
    spelled = [
        token
        if kind in (TYPE.CONTROL, TYPE.USER_DEFINED) or set(token) <= letters
        else "".join(alphabet[b] for b in token.encode("utf-8"))
        for token, kind in zip(tokens, types)
    ]
    merges = _merges(reader)
    if merges is None:
        raise SourceError("the GGUF's byte-level tokenizer has no tokenizer.ggml.merges: re-convert the file")
    tokenizer = Tokenizer(models.BPE(vocab=_vocab(spelled), merges=merges, ignore_merges=pre in _IGNORE_MERGES))
    split = BYTE_LEVEL_SPLITS[pre]
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_tokenizer(
    reader: gguf.GGUFReader, tokens: list[str], types: list[int], unk_id: int | None
) -> Tokenizer:
    """Sentencepiece as BPE with byte fallback: transformers' LlamaTokenizer, built from GGUF fields."""
    architecture = _field(reader, "general.architecture", "")
    if architecture in _SENTENCEPIECE_NOT_SUPPORTED:
        raise SourceError(
            f"sentencepiece tokenizers of {architecture!r} GGUFs are not supported: "
            "export from a folder that has tokenizer.json"
        )
    merges = _merges(reader)
    if merges is None:
        scores = _field(reader, KEY.SCORES)
        if scores is None:
            raise SourceError("the GGUF's sentencepiece tokenizer has neither merges nor scores: re-convert the file")
        merges = _merges_from_scores(tokens, scores)
    unk = tokens[unk_id] if unk_id is not None else None
    bpe = models.BPE(vocab=_vocab(tokens), merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    # sentencepiece's dummy prefix: one "\u2581" before every piece of text between special tokens, also
    # where the text already starts with a space (" " -> "\u2581\u2581"), as transformers' LlamaTokenizerFast and
    # llama.cpp do. Metaspace's prepend_scheme skips text that starts with a space, so it is spelled out here.
    add_prefix = bool(_field(reader, KEY.ADD_PREFIX, True))
    spaces = normalizers.Replace(" ", "\u2581")
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), spaces]) if add_prefix else spaces
    tokenizer.pre_tokenizer = None
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


# --- pieces shared by both -----------------------------------------------------------------------


def _vocab(tokens: list[str]) -> dict[str, int]:
    """text -> id; a text listed twice keeps its first id (the later copy can never be produced)."""
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    return vocab


def _merges(reader: gguf.GGUFReader) -> list[tuple[str, str]] | None:
    merges = _field(reader, KEY.MERGES)
    if merges is None:
        return None
    pairs = []
    for merge in merges:
        left, space, right = merge.partition(" ")
        if not space or not left or not right or " " in right:
            raise SourceError(f"GGUF merge {merge!r} is not two tokens split by one space: re-convert the file")
        pairs.append((left, right))
    return pairs


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by a scored vocabulary, best first (transformers' `generate_merges`).

    Every token that splits into two vocabulary tokens is a merge of those two; a higher score means
    the merged token was learned earlier. Ties go to the longer left piece, then the longer right one.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    score_of = dict(zip(tokens, scores))
    found = []
    for merged, score in score_of.items():
        cuts = [(merged[:cut], merged[cut:]) for cut in range(1, len(merged))]
        pairs = sorted(((a, b) for a, b in cuts if a in vocab and b in vocab), key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found.extend((a, b, score) for a, b in pairs)
    # Stable sort: equal keys keep the order above, as in transformers.
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def _add_typed_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Make control and unknown tokens special added tokens, user-defined ones plain added tokens.

    Added tokens are matched whole in the text before BPE runs, as llama.cpp does; without this
    `<|im_start|>` would be cut into pieces.
    """
    special_types = (TYPE.CONTROL, TYPE.UNKNOWN)
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k in special_types]
    plain = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == TYPE.USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(plain)


def _bos_eos_template(tokens: list[str], bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """A TemplateProcessing post-processor that adds BOS (and EOS) when the GGUF asks for it.

    Written as JSON rather than through `processors.TemplateProcessing`, whose string templates
    cannot name a token holding ':' or a space.
    """

    def special(token_id: int, type_id: int) -> dict[str, Any]:
        return {"SpecialToken": {"id": tokens[token_id], "type_id": type_id}}

    def segment(name: str, type_id: int) -> list[dict[str, Any]]:
        before = [special(bos_id, type_id)] if bos_id is not None else []
        after = [special(eos_id, type_id)] if eos_id is not None else []
        return [*before, {"Sequence": {"id": name, "type_id": type_id}}, *after]

    used = [i for i in (bos_id, eos_id) if i is not None]
    return {
        "type": "TemplateProcessing",
        "single": segment("A", 0),
        "pair": segment("A", 0) + segment("B", 1),
        "special_tokens": {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for i in used},
    }
