"""Write the tokenizer asset of the `deepseek-r1-distill-qwen-1.5b` preset from a Qwen2.5 GGUF.

The preset (random weights of DeepSeek-R1-Distill-Qwen-1.5B's shape) needs the real tokenizer so
benchmarks run on real token counts, and CI has no hub. DeepSeek-R1-Distill-Qwen keeps Qwen2's
byte-level BPE (151643 regular tokens, 151387 merges, the "qwen2" split) but replaces the added
tokens (ids 151643..151664), the special tokens and the chat template. So we convert a Qwen2.5 GGUF
with `tokenizer_from_gguf`, keep its regular vocabulary and merges, and put DeepSeek's tokens on top:

    python tools/make_preset_tokenizer.py [--gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf]
(default: bench/weights.py's real GGUF, EDGEINFER_QWEN_GGUF or weights/ in the repository)

writes edgeinfer/presets/deepseek-r1-distill-qwen-1.5b/tokenizer.json.gz (gzip with mtime 0, so
the same input gives the same bytes) and tokenizer_config.json, then checks them (`verify`).

Where DeepSeek's values come from (the hub is unreachable here; read through public copies):
- Added tokens and their special flags: the tokenizer.json / tokenizer_config.json of
  DeepSeek-R1-Distill-Qwen-1.5B as quoted in Qualcomm's ai-hub-models deepseek_r1 model code
  ("Ref: huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/blob/main/tokenizer_config.json")
  and in a full copy shipped with Esperanto/DeepSeek-R1-Distill-Qwen-1.5B-kvc-fp16-onnx; both agree:
  22 tokens, 151643..151664, special only for end/begin of sentence and the quad/vision/pad ones.
  Note that <｜User｜>, <｜Assistant｜>, <think> and </think> are NOT special (decode with
  skip_special_tokens keeps them).
- bos <｜begin▁of▁sentence｜> 151646 with add_bos_token true, eos = pad = <｜end▁of▁sentence｜>
  151643; the real tokenizer.json has an NFC normalizer and a TemplateProcessing that adds BOS,
  which we copy.
- Chat template: two versions exist. The first release ends
  `{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}` (the two
  copies above). DeepSeek later changed the tail to `{{'<｜Assistant｜><think>\\n'}}` so the model
  always opens its reasoning; that version is in LiteLLM's tokenizer-config fixture
  (deepseek-r1 ..., model_max_length 16384) and, reformatted, in llama.cpp's
  models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja. We ship the later one; apart
  from the tail the two are identical.
- model_max_length: the real file says 16384; we write 131072 (max_position_embeddings), as the
  preset asks for.
- The real tokenizer_config.json says tokenizer_class "LlamaTokenizer(Fast)", which is wrong for a
  byte-level BPE; we write "PreTrainedTokenizerFast" so transformers takes tokenizer.json as is.

Verified by `verify` (run on every write): the gz is < 4 MB and has mtime 0; the tokenizer loads,
has 151665 tokens, every DeepSeek token has its id and special flag; the template renders with
jinja2 (transformers' settings) for one user message with add_generation_prompt=True to
`<｜begin▁of▁sentence｜><｜User｜>...<｜Assistant｜><think>\\n`, which encodes to
[151646, 151644, ..., 151645, 151648, 198]; plain text encodes to the same ids as the Qwen2.5 GGUF
tokenizer; and, when transformers is installed, AutoTokenizer on the written files gives the same
prompt text and ids.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gguf  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from bench.weights import FETCH_HINT, real_gguf  # noqa: E402
from edgeinfer.export.gguf_tokenizer import tokenizer_from_gguf  # noqa: E402

PRESET_DIR = REPO / "edgeinfer" / "presets" / "deepseek-r1-distill-qwen-1.5b"
MAX_GZ_BYTES = 4 * 1024 * 1024

QWEN2_REGULAR_TOKENS = 151643  # ids below this are Qwen2's byte-level BPE; added tokens start here
QWEN2_MERGES = 151387

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# (id, text, special) exactly as DeepSeek-R1-Distill-Qwen-1.5B's tokenizer.json lists them.
DEEPSEEK_ADDED_TOKENS = [
    (151643, EOS, True),
    (151644, "<｜User｜>", False),
    (151645, "<｜Assistant｜>", False),
    (151646, BOS, True),
    (151647, "<|EOT|>", False),
    (151648, "<think>", False),
    (151649, "</think>", False),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
]

# DeepSeek's template is one physical line; split here only for reading (the pieces join with no
# separator). `\n` inside the quoted jinja strings is jinja's escape, as in the original.
DEEPSEEK_CHAT_TEMPLATE = "".join(
    [
        r"{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}",
        r"{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}",
        r"{%- for message in messages %}{%- if message['role'] == 'system' %}",
        r"{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}",
        r"{{bos_token}}{{ns.system_prompt}}",
        r"{%- for message in messages %}",
        r"{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}",
        r"{{'<｜User｜>' + message['content']}}{%- endif %}",
        r"{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}",
        r"{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}",
        r"{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>'",
        r" + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n'",
        r" + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}",
        r"{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>'",
        r" + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n'",
        r" + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}",
        r"{%- endif %}{%- endfor %}{%- endif %}",
        r"{%- if message['role'] == 'assistant' and message['content'] is not none %}",
        r"{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}",
        r"{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}",
        r"{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}",
        r"{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}",
        r"{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}",
        r"{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}",
        r"{%- set ns.is_output_first = false %}{%- else %}",
        r"{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}",
        r"{%- endif %}{%- endif %}{%- endfor -%}",
        r"{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}",
        r"{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}",
    ]
)


def deepseek_tokenizer_json(qwen_tokenizer_json: str) -> dict:
    """Qwen2's regular vocabulary and merges under DeepSeek's added tokens, normalizer and BOS."""
    data = json.loads(qwen_tokenizer_json)
    vocab = data["model"]["vocab"]
    regular = {text: i for text, i in vocab.items() if i < QWEN2_REGULAR_TOKENS}
    if len(regular) != QWEN2_REGULAR_TOKENS or len(data["model"]["merges"]) != QWEN2_MERGES:
        sys.exit(f"the GGUF is not Qwen2's vocabulary ({len(regular)} regular tokens, {len(data['model']['merges'])} merges)")
    # Added tokens stay out of model.vocab, as in DeepSeek's file: tokenizers gives them the ids
    # after the vocabulary in the listed order, which are exactly 151643..151664.
    data["model"]["vocab"] = regular
    data["added_tokens"] = [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": special}
        for i, text, special in DEEPSEEK_ADDED_TOKENS
    ]
    data["normalizer"] = {"type": "NFC"}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {BOS: {"id": BOS, "ids": [151646], "tokens": [BOS]}},
    }
    return data


def deepseek_tokenizer_config() -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": special}
            for i, text, special in DEEPSEEK_ADDED_TOKENS
        },
        "bos_token": BOS,
        "chat_template": DEEPSEEK_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": 131072,
        "pad_token": EOS,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def gzip_bytes(data: bytes) -> bytes:
    """gzip with mtime 0 and a fixed name, so the same tokenizer always gives the same file."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="tokenizer.json", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buffer.getvalue()


def write_preset(gguf_path: Path, out: Path) -> Tokenizer:
    """Write both files into OUT; return the Qwen tokenizer converted from the GGUF, for checks."""
    reader = gguf.GGUFReader(gguf_path)
    pre = reader.get_field(gguf.Keys.Tokenizer.PRE)
    if pre is None or pre.contents() not in ("qwen2", "deepseek-r1-qwen"):
        sys.exit(f"{gguf_path} does not use Qwen2's pre-tokenizer: pass a Qwen2/Qwen2.5 GGUF")
    files = tokenizer_from_gguf(reader)
    deepseek = deepseek_tokenizer_json(files.tokenizer_json)
    tokenizer_json = json.dumps(deepseek, ensure_ascii=False, separators=(",", ":"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json.gz").write_bytes(gzip_bytes(tokenizer_json.encode("utf-8")))
    config = json.dumps(deepseek_tokenizer_config(), ensure_ascii=False, indent=2) + "\n"
    (out / "tokenizer_config.json").write_text(config, encoding="utf-8")
    return Tokenizer.from_str(files.tokenizer_json)


def render_prompt(template: str, messages: list[dict], **extra) -> str:
    """Render like transformers' apply_chat_template: sandboxed jinja2, trim_blocks and lstrip_blocks."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, bos_token=BOS, eos_token=EOS, **extra)


def verify(out: Path, qwen: Tokenizer) -> list[str]:
    """Check the written files; return the lines of what was verified (exits on the first failure)."""
    report = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            sys.exit(f"FAILED: {what}")
        report.append(what)

    gz = (out / "tokenizer.json.gz").read_bytes()
    check(len(gz) < MAX_GZ_BYTES, f"tokenizer.json.gz is {len(gz) / 1e6:.2f} MB (< 4 MiB)")
    check(gz[4:8] == b"\0\0\0\0", "gzip header mtime is 0")
    tokenizer_json = gzip.decompress(gz).decode("utf-8")
    tokenizer = Tokenizer.from_str(tokenizer_json)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))

    check(tokenizer.get_vocab_size(with_added_tokens=True) == 151665, "151665 tokens (151643 regular + 22 added)")
    added = tokenizer.get_added_tokens_decoder()
    for i, text, special in DEEPSEEK_ADDED_TOKENS:
        check(tokenizer.token_to_id(text) == i and added[i].content == text and added[i].special == special,
              f"{text} is id {i}, special={special}")

    messages = [{"role": "user", "content": "What is 1+1?"}]
    prompt = render_prompt(config["chat_template"], messages, add_generation_prompt=True)
    check(prompt == f"{BOS}<｜User｜>What is 1+1?<｜Assistant｜><think>\n",
          f"template renders a user turn with add_generation_prompt=True as {prompt!r}")
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    check(ids[:2] == [151646, 151644] and ids[-3:] == [151645, 151648, 198],
          f"the prompt encodes to {ids}: <｜User｜> is 151644, it ends <｜Assistant｜><think>\\n")
    check(tokenizer.encode("hi").ids[0] == 151646, "plain encode adds BOS 151646 (add_bos_token)")
    check(tokenizer.decode(ids, skip_special_tokens=False) == prompt, "the prompt decodes back to itself")

    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
    ]
    rendered = render_prompt(config["chat_template"], history, add_generation_prompt=True)
    expected = f"{BOS}Be brief.<｜User｜>2+2?<｜Assistant｜>\n\n4{EOS}<｜User｜>3+3?<｜Assistant｜><think>\n"
    check(rendered == expected, "a multi-turn chat drops earlier reasoning up to </think>, as DeepSeek's does")

    samples = ["def add(a, b):\n    return a + b\n", "你好，世界 🌍", "  spaces\tand\r\nnewlines ", "x = 12345.678"]
    check(all(tokenizer.encode(s, add_special_tokens=False).ids == qwen.encode(s, add_special_tokens=False).ids
              for s in samples), f"{len(samples)} plain texts encode as the Qwen2.5 GGUF tokenizer does")
    report += _check_with_transformers(tokenizer_json, config, messages, prompt, ids)
    return report


def _check_with_transformers(tokenizer_json: str, config: dict, messages, prompt: str, ids: list[int]) -> list[str]:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return ["(transformers not installed: AutoTokenizer check skipped)"]
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        Path(folder, "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        hf = AutoTokenizer.from_pretrained(folder)
        hf_prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        hf_ids = hf.encode(hf_prompt, add_special_tokens=False)
        plain = hf.encode("hi")
    if hf_prompt != prompt or hf_ids != ids or plain[0] != 151646:
        sys.exit(f"FAILED: transformers disagrees: {hf_prompt!r} {hf_ids} {plain}")
    return ["transformers' AutoTokenizer on these files renders and encodes the prompt identically"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=real_gguf(), help="a Qwen2/Qwen2.5 GGUF (any size)")
    parser.add_argument("--out", type=Path, default=PRESET_DIR, help="folder to write the two files into")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        sys.exit(f"{args.gguf} does not exist: pass --gguf with any Qwen2.5 GGUF, or {FETCH_HINT}")
    qwen = write_preset(args.gguf, args.out)
    for line in verify(args.out, qwen):
        print("ok:", line)
    print(f"wrote {args.out / 'tokenizer.json.gz'} and {args.out / 'tokenizer_config.json'}")


if __name__ == "__main__":
    main()
