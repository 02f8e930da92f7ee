"""tokenizer_from_gguf: tiny GGUFs written here (seconds), and the real Qwen2.5 GGUF against transformers.

The real-file checks need the real GGUF (EDGEINFER_QWEN_GGUF, else weights/ in the repository, made by
bench/fetch_real_weights.sh) and transformers; they skip without them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer, pre_tokenizers

from bench.weights import FETCH_HINT, real_gguf
from edgeinfer.errors import SourceError
from edgeinfer.export.gguf_tokenizer import tokenizer_from_gguf

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
REAL_GGUF = real_gguf()


def write_gguf(path: Path, tokens: list[str], types: list[int], *, model: str = "gpt2", pre: str | None = "qwen2",
               merges: list[str] | None = None, scores: list[float] | None = None, arch: str = "qwen2",
               settings: dict | None = None) -> gguf.GGUFReader:
    """A GGUF holding only tokenizer metadata (plus what `settings` adds, by GGUFWriter method name)."""
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges is not None:
        writer.add_token_merges(merges)
    if scores is not None:
        writer.add_token_scores(scores)
    for method, value in (settings or {}).items():
        getattr(writer, method)(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(path)


# --- a tiny byte-level BPE: 256 byte tokens, a few merges, two control tokens, one user-defined ---

BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
TINY_TOKENS = BYTES + [m.replace(" ", "") for m in MERGES] + ["<|start|>", "<|end|>", "<think>"]
TINY_TYPES = [NORMAL] * (len(BYTES) + len(MERGES)) + [CONTROL, CONTROL, USER_DEFINED]
START, END, THINK = (TINY_TOKENS.index(t) for t in ("<|start|>", "<|end|>", "<think>"))
TEMPLATE = "{% for m in messages %}<|start|>{{ m['content'] }}<|end|>{% endfor %}"


def tiny_byte_level(tmp_path: Path, **kwargs) -> gguf.GGUFReader:
    settings = {"add_bos_token_id": START, "add_eos_token_id": END, "add_eot_token_id": THINK,
                "add_chat_template": TEMPLATE, **kwargs.pop("settings", {})}
    return write_gguf(tmp_path / "tiny.gguf", TINY_TOKENS, TINY_TYPES, merges=MERGES, settings=settings, **kwargs)


def test_byte_level_round_trips_any_text(tmp_path):
    tokenizer = Tokenizer.from_str(tokenizer_from_gguf(tiny_byte_level(tmp_path)).tokenizer_json)
    assert tokenizer.encode("hello world").ids == [TINY_TOKENS.index("hello"), TINY_TOKENS.index("Ġworld")]
    for text in ["hello world", "héllo wörld", "中文 テスト", "emoji 👍🏽", "  tabs\t\tand\r\nlines \n\n", "x=1+2", ""]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text


def test_control_tokens_are_special_and_user_defined_ones_are_not(tmp_path):
    tokenizer = Tokenizer.from_str(tokenizer_from_gguf(tiny_byte_level(tmp_path)).tokenizer_json)
    ids = tokenizer.encode("<|start|>hello<think><|end|>").ids
    assert ids == [START, TINY_TOKENS.index("hello"), THINK, END]
    added = tokenizer.get_added_tokens_decoder()
    assert added[START].special and added[END].special and not added[THINK].special
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello<think>"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|start|>hello<think><|end|>"


def test_settings_come_from_the_file(tmp_path):
    files = tokenizer_from_gguf(tiny_byte_level(tmp_path))
    assert files.bos_token_id == START
    assert files.eos_token_ids == [END, THINK]  # eos, then eot
    assert files.add_bos_token is False  # gpt2 vocabularies add no BOS unless the file says so
    assert files.chat_template == TEMPLATE
    assert files.special_tokens == {"bos": "<|start|>", "eos": "<|end|>"}


def test_add_bos_token_and_llama3_split(tmp_path):
    reader = tiny_byte_level(tmp_path, pre="llama-bpe", settings={"add_add_bos_token": True})
    files = tokenizer_from_gguf(reader)
    tokenizer = Tokenizer.from_str(files.tokenizer_json)
    assert files.add_bos_token is True
    assert tokenizer.encode("hello").ids == [START, TINY_TOKENS.index("hello")]
    assert [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str("12345")] == ["123", "45"]


@pytest.mark.parametrize("pre, pieces", [("qwen2", ["1", "2", "3"]), ("default", ["123"]), ("gpt2", ["123"])])
def test_pre_tokenizer_splits_numbers_like_the_model_did(tmp_path, pre, pieces):
    tokenizer = Tokenizer.from_str(tokenizer_from_gguf(tiny_byte_level(tmp_path, pre=pre)).tokenizer_json)
    assert [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str("123")] == pieces


def test_unsupported_tokenizers_raise_source_error(tmp_path):
    with pytest.raises(SourceError, match="pre-tokenizer 'made-up'"):
        tokenizer_from_gguf(tiny_byte_level(tmp_path, pre="made-up"))
    with pytest.raises(SourceError, match="tokenizer type 't5'"):
        tokenizer_from_gguf(write_gguf(tmp_path / "t5.gguf", ["<pad>", "a"], [CONTROL, NORMAL], model="t5"))


# --- a tiny sentencepiece-style vocabulary (scores, no merges), trained here on a few lines ---

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def tokenize(text):\n    return [piece for piece in text.split()]",
    "Tokenizers turn text into pieces; the pieces become ids, and the ids go to the model.",
    "Numbers like 12345 and 3.14159 appear in text too.",
] * 20


def tiny_sentencepiece(tmp_path: Path) -> gguf.GGUFReader:
    from tokenizers import models, trainers

    # A BPE trained like sentencepiece (Metaspace, byte fallback) stands in for a llama vocabulary.
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trained = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *bytes_], show_progress=False)
    trained.train_from_iterator(CORPUS, trainer)
    tokens = [t for t, _ in sorted(trained.get_vocab().items(), key=lambda item: item[1])]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * (len(tokens) - 259)
    scores = [0.0] * 259 + [-float(rank) for rank in range(len(tokens) - 259)]  # earlier merge, higher score
    # transformers reads a model config from the GGUF too, so give it a minimal llama one.
    settings = {"add_bos_token_id": 1, "add_eos_token_id": 2, "add_unk_token_id": 0, "add_context_length": 512,
                "add_embedding_length": 8, "add_block_count": 1, "add_feed_forward_length": 16, "add_head_count": 2,
                "add_layer_norm_rms_eps": 1e-5}
    return write_gguf(tmp_path / "spm.gguf", tokens, types, model="llama", pre=None, scores=scores, arch="llama",
                      settings=settings)


SPM_TEXTS = ["The quick brown fox", "def tokenize(text):\n    return text", "  two leading spaces", "trailing ",
             "unseen: Zebra 42 ünïcödé 中文 👍", "<s>inside</s> markers", "a\tb\r\nc", ""]


def test_sentencepiece_round_trips_and_adds_bos(tmp_path):
    files = tokenizer_from_gguf(tiny_sentencepiece(tmp_path))
    tokenizer = Tokenizer.from_str(files.tokenizer_json)
    assert files.add_bos_token is True and files.bos_token_id == 1 and files.eos_token_ids == [2]
    assert files.special_tokens == {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}
    for text in ["The quick brown fox", "def tokenize(text):\n    return text", "unseen: Zebra 42 ünïcödé 中文 👍",
                 "  two leading spaces", " one"]:
        ids = tokenizer.encode(text).ids
        assert ids[0] == 1
        assert tokenizer.decode(ids) == text


def test_sentencepiece_matches_transformers(tmp_path):
    """Where transformers' GGUF loader and the models' own tokenizers agree. They part on text that starts with a
    space and on text after a special token: sentencepiece (and llama.cpp, and each model's own tokenizer.json, see
    the Phi-3 test below) puts its prefix space there too, transformers' non-legacy rebuild does not."""
    auto = pytest.importorskip("transformers").AutoTokenizer
    tokenizer = Tokenizer.from_str(tokenizer_from_gguf(tiny_sentencepiece(tmp_path)).tokenizer_json)
    reference = auto.from_pretrained(str(tmp_path), gguf_file="spm.gguf")
    for text in [t for t in SPM_TEXTS if not t.startswith(" ") and "<s>" not in t]:
        ids = tokenizer.encode(text).ids
        assert ids == reference.encode(text), text
        for skip in (False, True):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


def test_sentencepiece_prefix_space_goes_before_each_text_piece(tmp_path):
    """As sentencepiece and llama.cpp do: before the text, also when it starts with a space, and after each special
    token."""
    tokenizer = Tokenizer.from_str(tokenizer_from_gguf(tiny_sentencepiece(tmp_path)).tokenizer_json)
    assert "".join(tokenizer.encode(" ", add_special_tokens=False).tokens) == "\u2581\u2581"
    assert tokenizer.encode("<s>The", add_special_tokens=False).tokens == ["<s>", "\u2581The"]


# --- llama.cpp's reference vocabularies: each model's own tokenizer on 47 hard texts ---

DATA = Path(__file__).parent / "data"


def reference_cases(vocab: Path) -> list[tuple[str, list[int]]]:
    texts = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = vocab.with_name(vocab.name + ".out").read_text().split("\n")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, ids)]


def test_phi3_sentencepiece_matches_its_own_tokenizer():
    """Phi-3's vocabulary, rebuilt from its GGUF, tokenizes llama.cpp's 47 test texts (spaces, tabs, newlines,
    accents, emoji, code) exactly as microsoft/Phi-3-mini's own tokenizer does."""
    vocab = DATA / "ggml-vocab-phi-3.gguf"
    files = tokenizer_from_gguf(gguf.GGUFReader(vocab))
    tokenizer = Tokenizer.from_str(files.tokenizer_json)
    cases = reference_cases(vocab)
    assert len(cases) == 47 and files.add_bos_token
    for text, expected in cases:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == expected, repr(text)
        assert tokenizer.decode(ids) == text, repr(text)


def test_whole_words_in_the_vocabulary_skip_the_merges_where_the_model_does(tmp_path):
    """Llama 3's tokenizer.json says ignore_merges: a pre-token found whole in the vocabulary is one token even
    where no chain of merges builds it (" Việt" in Llama 3); Qwen2's does not."""
    tokens = BYTES + ["ab", "abc"]  # "abc" is in the vocabulary, but no merge makes it from "ab" + "c"
    merges = ["a b"]
    for pre, expected in (("llama-bpe", ["abc"]), ("qwen2", ["ab", "c"])):
        reader = write_gguf(tmp_path / f"{pre}.gguf", tokens, [NORMAL] * len(tokens), pre=pre, merges=merges)
        tokenizer = Tokenizer.from_str(tokenizer_from_gguf(reader).tokenizer_json)
        assert tokenizer.encode("abc", add_special_tokens=False).tokens == expected, pre


def test_gpt4o_split_is_o200k(tmp_path):
    """Phi-4-mini's GGUF names the "gpt-4o" pre-tokenizer: the o200k regex, split by tokenizers as by the regex
    module (case-aware words, the contraction a suffix, digits in threes, "/" after a newline kept)."""
    regex = pytest.importorskip("regex")
    from edgeinfer.export.gguf_tokenizer import BYTE_LEVEL_SPLITS

    tokenizer = Tokenizer.from_str(tokenizer_from_gguf(tiny_byte_level(tmp_path, pre="gpt-4o")).tokenizer_json)
    text = "HelloWorld's CAPSLock don'T 1234567 ünïcödé\n/path/x  \t\n\n  end 👍?!"
    pieces = [text[start:end] for _, (start, end) in tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    assert pieces == regex.findall(BYTE_LEVEL_SPLITS["gpt-4o"], text)
    assert pieces[:4] == ["Hello", "World's", " CAPSLock", " don'T"] and "123" in pieces


# --- the real Qwen2.5 GGUF against transformers' own GGUF tokenizer ---

needs_real_gguf = pytest.mark.skipif(
    not REAL_GGUF.is_file(), reason=f"{REAL_GGUF} is absent (to run: {FETCH_HINT})"
)

SAMPLES = [
    "Hello, world!",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "<html><body><div class=\"x\">&nbsp;</div></body></html>",
    "    indented with spaces\n\tand a tab\n\n\n\nmany blank lines",
    "trailing spaces    ",
    "   ",
    "\r\n\r\n",
    "a\u00a0non-breaking\u2003em space\u200bzero width",
    "I'm sure you're right, they'll see it's fine; we'd've known. DON'T SHOUT",
    "1234567890 3.14159265 -42 1e-10 0x1F 1,000,000",
    "中文分词测试：你好，世界！今天天气很好。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 문장도 있습니다.",
    "Ελληνικά και Русский текст и العربية",
    "emoji 👍🏽 🎉 👨‍👩‍👧‍👦 🇺🇸 ❤️",
    "café naïve résumé Ångström ñ",
    "e\u0301 (decomposed é) vs \u00e9",
    "math: ∑ᵢ xᵢ² ≤ ∞, ∀x ∈ ℝ",
    "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>text<|im_start|>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n    pass<|fim_middle|>",
    "<tool_call>\n{\"name\": \"get\", \"arguments\": {}}\n</tool_call>",
    "<|im_start|",
    "[PAD151665] is an unused token's text",
    "",
    "x" * 300,
    "🙂" * 20,
]


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Seeded mixtures of ASCII, whitespace runs, punctuation, CJK, emoji and special-token text."""
    rng = random.Random(seed)
    pieces = ["a", "Z", "the", " ", "  ", "\n", "\t", "\r\n", "    ", "0", "42", "123456", "'s", "'LL", ".", "!!",
              "->", "{}", "中", "文字", "ー", "é", "ß", "Ж", "🙂", "👍🏽", "\u200d", "\u0301", "<|im_start|>",
              "<|im_end|>", "<think>", "<|endoftext|>", "_", "__init__", "http://x.org/a?b=c"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def qwen_pair():
    """(our tokenizer, transformers' tokenizer, our TokenizerFiles) for the real GGUF."""
    auto = pytest.importorskip("transformers").AutoTokenizer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file; never ask the hub
    files = tokenizer_from_gguf(gguf.GGUFReader(REAL_GGUF))
    reference = auto.from_pretrained(str(REAL_GGUF.parent), gguf_file=REAL_GGUF.name)
    return Tokenizer.from_str(files.tokenizer_json), reference, files


@needs_real_gguf
def test_real_gguf_encodes_and_decodes_like_transformers(qwen_pair):
    ours, reference, _ = qwen_pair
    texts = SAMPLES + random_texts(200)
    mismatches = []
    for text in texts:
        ids = ours.encode(text).ids
        same = ids == reference.encode(text) and all(
            ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
            for skip in (False, True)
        )
        if not same:
            mismatches.append(text)
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, first: {mismatches[0]!r}"


@needs_real_gguf
def test_real_gguf_decodes_any_ids_like_transformers(qwen_pair):
    ours, reference, _ = qwen_pair
    rng = random.Random(1)
    # Random ids split UTF-8 sequences and mix in added tokens: decoding must still agree.
    for _ in range(200):
        ids = [rng.randrange(len(reference)) for _ in range(rng.randint(1, 12))]
        assert ours.decode(ids) == reference.decode(ids), ids


@needs_real_gguf
def test_real_gguf_settings_match_transformers(qwen_pair):
    ours, reference, files = qwen_pair
    assert ours.get_vocab_size() == len(reference) == 151936
    assert files.bos_token_id == reference.bos_token_id == 151643
    assert files.eos_token_ids == [reference.eos_token_id] == [151645]
    assert files.special_tokens["pad"] == reference.pad_token
    assert files.add_bos_token is False and files.chat_template == reference.chat_template
    added = ours.get_added_tokens_decoder()
    assert added[151644].content == "<|im_start|>" and added[151644].special
    assert added[151657].content == "<tool_call>" and not added[151657].special  # USER_DEFINED in the file
