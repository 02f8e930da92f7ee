"""Chat templates from strangers render within limits: every hostile vector ends in one line, fast and small.

Each vector below hung, took gigabytes, or ended in a traceback before template_sandbox.py; now each is one
GenerationError (PackageError where the template is refused at load) within seconds and without a memory spike.
Honest templates (DeepSeek-R1, ChatML, Llama-3, Qwen2.5's tool template) render token for token as before.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from edgeinfer.chat import ChatFormat
from edgeinfer.errors import EdgeInferError, GenerationError, PackageError
from edgeinfer.export.presets import PresetSource, byte_tokenizer_json
from edgeinfer.package import describe_files
from edgeinfer.tokenizer import TextTokenizer

from .conftest import CHATML

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 4096  # so the text bound is 16 x 4096 = 65536 characters
BIG = "{% set s = 'x' * 60000 %}"
NESTED = "{% set ns = namespace(l='x') %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"

RENDER_VECTORS = {
    "str repeat": "{{ 'ab ' * 10000000 }}",
    "list repeat": "{{ ([0] * 100000000)|length }}",
    "nested range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops within the range cap": "{% for i in range(60000) %}{% for j in range(60000) %}{% endfor %}{% endfor %}",
    "nested loops over a list": "{% set l = range(6000)|list %}{% for i in l %}{% for j in l %}{% endfor %}{% endfor %}",
    "range 10**30": "{% for i in range(10**30) %}{% endfor %}",
    "power": "{{ 10 ** 100000 }}",
    "power of a power": "{{ 10 ** (10 ** 8) }}",
    "squaring in a loop": "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "float overflow": "{{ 2.0 ** 100000 }}",
    "percent width": "{{ '%100000000s' % 'x' }}",
    "percent star width": "{{ '%*s' % (100000000, 'x') }}",
    "format filter": "{{ '%100000000d'|format(1) }}",
    "str.format width": "{{ '{:>100000000}'.format(1) }}",
    "center filter": "{{ 'x'|center(100000000) }}",
    "indent filter": "{{ ('a\n' * 20000)|indent(20000) }}",
    "ljust method": "{{ 'x'.ljust(100000000) }}",
    "tilde doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "plus doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "join of a huge list": BIG + "{{ ([s] * 60000)|join }}",
    "join method": BIG + "{{ s.join(range(60000)|map('string'))|length }}",
    "replace method": BIG + "{{ s.replace('x', s)|length }}",
    "replace filter": BIG + "{{ s|replace('x', s)|length }}",
    "expandtabs": "{% set t = '\t' * 60000 %}{{ t.expandtabs(60000)|length }}",
    "translate": BIG + "{{ s.translate({120: s})|length }}",
    "wordwrap": "{% set t = 'x ' * 30000 %}{{ t|wordwrap(1, wrapstring=t)|length }}",
    "urlize target": "{% set t = 'http://a.b ' * 5000 %}{{ t|urlize(target='x' * 60000)|length }}",
    "batch fill": "{{ range(60000)|batch(60000, 'x' * 60000)|list|length }}",
    "sum of lists": "{% set l = range(6000)|list %}{{ ([l] * 6000)|sum(start=[])|length }}",
    "print nested references": NESTED + "{{ ns.l }}",
    "string filter on nested references": NESTED + "{{ ns.l|string|length }}",
    "tojson deep indent": "{% set ns = namespace(l=[]) %}{% for i in range(3000) %}{% set ns.l = [ns.l] %}{% endfor %}"
                          "{{ ns.l|tojson(indent=1000)|length }}",
    "pprint": "{% set ns = namespace(l=[]) %}{% for i in range(3000) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
              "{{ ns.l|pprint|length }}",
    "to_bytes": "{{ (1).to_bytes(100000000, 'big')|length }}",
    "lipsum": "{{ lipsum(n=10000, min=1000, max=1000)|length }}",
    "strftime_now amplification": "{{ strftime_now('%c' * 30000)|length }}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "text built in a macro": "{% macro m() %}{% for i in range(60000) %}{% for j in range(60000) %}xxxxxxxxxxxxxxxxxxxxxxxx"
                             "{% endfor %}{% endfor %}{% endmacro %}{% set y = m() %}",
    "text built in a set block": "{% set y %}{% for i in range(60000) %}{% for j in range(60000) %}xxxxxxxxxxxxxxxx"
                                 "{% endfor %}{% endfor %}{% endset %}",
    "recursive loop": "{% for x in [1] recursive %}{% if loop.depth < 3 %}{{ loop(range(60000)) }}{% endif %}"
                      "yyyyyyyyyyyy{% endfor %}",
    "marker with a forged index": "{{ messages[0]['content'][:-2] ~ '7\ue001' }}",
    "sandbox escape": "{{ ''.__class__.__mro__ }}",
    "type error": "{{ 1 + 'a' }}",
    "division by zero": "{{ 1 // 0 }}",
    "undefined function": "{{ foo() }}",
    "huge int printed": "{{ 2 ** 4000 * 2 ** 4000 }}",
}

LOAD_VECTORS = {
    "deeply nested expression": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "template of a megabyte": "x" * (1 << 20),
    "syntax error": "{% for %}",
}


def byte_chat(template: str | None, specials=("<|im_start|>", "<|im_end|>"), context: int = CONTEXT,
              config: dict | None = None, chat_format: str = "chatml") -> ChatFormat:
    tokenizer_json, _ = byte_tokenizer_json(list(specials))
    tok = TextTokenizer(Tokenizer.from_str(tokenizer_json), config or {"eos_token": "<|im_end|>"}, None, False)
    return ChatFormat(tok, template, chat_format, context)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def measured(action):
    """(exception raised by ACTION, seconds, peak MiB of Python allocations while it ran)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        action()
    except EdgeInferError as exc:
        caught = exc
    else:
        caught = None
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return caught, seconds, peak


@pytest.mark.parametrize("name", RENDER_VECTORS)
def test_hostile_templates_end_in_one_line(name):
    chat = byte_chat(RENDER_VECTORS[name])
    caught, seconds, peak = measured(lambda: chat.encode("hello"))
    assert isinstance(caught, GenerationError), f"{name}: rendered without an error"
    assert "chat template" in one_line(caught) and "fix or remove" in str(caught)
    assert seconds < 10, f"{name}: {seconds:.1f} s"  # a hang bound, not a speed target (the limit is 2 s)
    assert peak < 64, f"{name}: {peak:.0f} MiB"


@pytest.mark.parametrize("name", LOAD_VECTORS)
def test_hostile_templates_are_refused_at_load(name):
    caught, seconds, peak = measured(lambda: byte_chat(LOAD_VECTORS[name]))
    assert isinstance(caught, PackageError), f"{name}: loaded"
    assert "chat template" in one_line(caught)
    assert seconds < 10 and peak < 64


def test_forged_markers_are_plain_text():
    """Private-use characters a template writes itself cannot pull a message's content in or out of place."""
    chat = byte_chat("{{ '\ue00099\ue001' }}{{ '\ue0000.0\ue001' }}[{{ messages[0]['content'] }}]")
    ids = chat.encode("hello")
    assert chat.tokenizer.decode(ids, skip_special=False) == "\ue00099\ue001\ue0000.0\ue001[hello]"


def test_a_copied_marker_brings_the_content_again():
    chat = byte_chat("{{ messages[0]['content'] }}|{{ messages[0]['content']|trim }}")
    assert chat.tokenizer.decode(chat.encode("hi"), skip_special=False) == "hi|hi"


def test_refusals_by_the_template_stay_one_line():
    chat = byte_chat("{{ raise_exception('Conversation roles\nmust alternate') }}")
    with pytest.raises(GenerationError, match="refused these messages: Conversation roles must alternate"):
        chat.encode("hello")


def test_output_is_bounded_by_the_context_length():
    template = "{% for i in range(1000) %}{{ messages[0]['content'] }} and more text{% endfor %}"
    byte_chat(template, context=4096).encode("hi")  # 17 000 characters: within 16 x 4096
    with pytest.raises(GenerationError, match="above the 4096 a prompt may take"):
        byte_chat(template, context=256).encode("hi")


# --- honest templates render exactly as before -------------------------------------------------------------

LLAMA3 = (
    "{%- set date_string = strftime_now('%d %b %Y') %}"
    "{{- bos_token }}<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}<|eot_id|>"
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN25_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 1+1? <|im_end|> stays text"},
    {"role": "assistant", "content": "2."},
    {"role": "tool", "content": "{\"result\": 2}"},
    {"role": "tool", "content": "second result"},
    {"role": "user", "content": "And 2+2?"},  # no padding: filters such as trim see a marker, not the content
]


def unbounded_ids(chat: ChatFormat, template: str, messages: list[dict]) -> list[int]:
    """chat.py's encode before the bounds: a plain sandbox, fixed markers, one render()."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    messages = chat.prepare([dict(m) for m in messages])
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    config = chat.tokenizer.config
    rendered = env.from_string(template).render(messages=marked, add_generation_prompt=True, **{
        k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)})
    if chat.format == "deepseek-r1" and not rendered.rstrip().endswith("<think>"):
        rendered += "<think>\n"
    ids = []
    for i, piece in enumerate(re.split("\ue000(\\d+)\ue001", rendered)):
        if i % 2:
            ids += chat.tokenizer.encode(messages[int(piece)]["content"], parse_special=False, add_bos=False)
        elif piece:
            ids += chat.tokenizer.encode(piece, parse_special=True, add_bos=False)
    bos = chat.tokenizer.bos_token_id
    if chat.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def transformers_text(template: str, specials, messages: list[dict], bos_token: str = "") -> str:
    from transformers import PreTrainedTokenizerFast

    tokenizer_json, _ = byte_tokenizer_json(list(specials))
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token=bos_token or None)
    return hf.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


HONEST = {
    "chatml": (CHATML, ("<|im_start|>", "<|im_end|>"), {}),
    "llama3": (LLAMA3, ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               {"bos_token": "<|begin_of_text|>"}),
    "qwen2.5 tools": (QWEN25_TOOLS, ("<|im_start|>", "<|im_end|>"), {}),
}


@pytest.mark.parametrize("name", HONEST)
def test_honest_templates_render_as_before_and_as_transformers(name):
    template, specials, config = HONEST[name]
    chat = byte_chat(template, specials, config=config)
    ids = chat.encode([dict(m) for m in CONVERSATION])
    assert ids == unbounded_ids(chat, template, CONVERSATION)
    assert chat.tokenizer.decode(ids, skip_special=False) == transformers_text(
        template, specials, CONVERSATION, config.get("bos_token", ""))


def test_real_deepseek_template_renders_as_before():
    files = PresetSource("deepseek-r1-distill-qwen-1.5b").tokenizer()
    tok = TextTokenizer(Tokenizer.from_str(files.tokenizer_json), files.tokenizer_config(), files.bos_token_id,
                        files.add_bos_token)
    chat = ChatFormat(tok, files.chat_template, "deepseek-r1", 4096)
    conversation = [m for m in CONVERSATION if m["role"] != "tool"]
    ids = chat.encode([dict(m) for m in conversation])
    assert ids == unbounded_ids(chat, files.chat_template, conversation)
    assert ids[:2] == [151646, 151644] and ids[-3:] == [151645, 151648, 198]


# --- through a whole package and the command line ----------------------------------------------------------

def test_cli_reports_a_hostile_template_in_one_line(preset_pkg, tmp_path):
    import shutil

    folder = Path(shutil.copytree(preset_pkg, tmp_path / "pkg"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tokenizer"]["chat_template"] = RENDER_VECTORS["nested range"]
    manifest["files"] = describe_files(folder, list(manifest["files"]))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "run", str(folder), "hello", "--max-new-tokens", "2"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("edgeinfer: error: the package's chat template")
    assert time.perf_counter() - started < 60
