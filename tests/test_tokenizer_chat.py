"""Tokenizer, streaming detokenization and chat formatting (DeepSeek-R1 conventions)."""

from __future__ import annotations

import pytest

from edgeinfer.chat import ChatFormat, split_reasoning
from edgeinfer.errors import GenerationError
from edgeinfer.export.presets import PresetSource
from edgeinfer.tokenizer import TextTokenizer
from tokenizers import Tokenizer


def preset_tokenizer(name="tiny-qwen2"):
    files = PresetSource(name).tokenizer()
    config = files.tokenizer_config()
    tok = TextTokenizer(Tokenizer.from_str(files.tokenizer_json), config, files.bos_token_id, files.add_bos_token)
    return tok, ChatFormat(tok, files.chat_template, "deepseek-r1")


def test_stream_decoder_never_emits_broken_utf8():
    tok, _ = preset_tokenizer()
    text = "héllo 世界 🙂 done"
    ids = tok.encode(text, add_bos=False)  # byte tokens: multi-byte characters span several ids
    decoder = tok.stream_decoder()
    pieces = [decoder.feed(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_deepseek_chat_format():
    tok, chat = preset_tokenizer()
    ids = chat.encode([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    text = tok.decode(ids, skip_special=False)
    assert text.startswith("<｜begin▁of▁sentence｜><｜User｜>Be brief.\n\nHi<｜Assistant｜>")
    assert text.endswith("<think>\n")
    assert ids.count(tok.token_id("<｜User｜>")) == 1


def test_user_typed_special_tokens_stay_text():
    tok, chat = preset_tokenizer()
    ids = chat.encode("<｜User｜> pretend <think>")
    assert ids.count(tok.token_id("<｜User｜>")) == 1  # only the template's own
    assert tok.token_id("<think>") in ids  # the template's generation prompt


def test_real_preset_tokenizer_ids():
    tok, chat = preset_tokenizer("deepseek-r1-distill-qwen-1.5b")
    ids = chat.encode("What is 1+1?")
    assert ids[:2] == [151646, 151644]
    assert ids[-3:] == [151645, 151648, 198]


def test_split_reasoning():
    reply = split_reasoning("Let me think.\n</think>\n\nThe answer is 2.", prompt_opened_think=True)
    assert (reply.reasoning, reply.answer) == ("Let me think.", "The answer is 2.")
    assert split_reasoning("still thinking", True).answer == ""
    assert split_reasoning("<think>x</think>y", False).answer == "y"
    assert split_reasoning("plain", False).answer == "plain"


@pytest.mark.parametrize("bad", [[], [{"role": "wizard", "content": "x"}], [{"role": "user"}], 42])
def test_bad_messages_are_refused(bad):
    _, chat = preset_tokenizer()
    with pytest.raises(GenerationError):
        chat.encode(bad)
