"""A dynamic package is also an onnxruntime-genai model folder: genai's own Model / Tokenizer / Generator load it as
exported and pick edgeinfer's greedy tokens, on raw prompts and through the chat template. genai runs its own view of
the decoder (genai_model.onnx: attention_mask in, the last logits row out) over the package's one weights file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest

import edgeinfer
from edgeinfer.errors import PackageError
from edgeinfer.export.genai_config import genai_config
from edgeinfer.graph_contract import GENAI_CONFIG, GENAI_DECODER, LOGITS_START
from edgeinfer.package import load_manifest, sha256_of
from edgeinfer.sampler import GREEDY

from .conftest import export_tiny

NEW_TOKENS = 24
PROMPTS = ["Hello world", "The quick brown fox jumps over", "def add(a, b):\n    return", "x"]


@pytest.fixture(scope="module")
def chatml_pkg(qwen2_dir, tmp_path_factory) -> Path:
    """The tiny Qwen2 checkpoint with a ChatML template, W4A16 cpu (the default package)."""
    return export_tiny(qwen2_dir, tmp_path_factory.mktemp("genai") / "chatml")


def edgeinfer_greedy(model, ids: list[int]) -> list[int]:
    """edgeinfer's greedy ids after IDS up to and including the first eos (genai stops there)."""
    gen = model.generator(GREEDY)
    gen.append(ids)
    out = gen.extend(NEW_TOKENS)
    ends = [i for i, t in enumerate(out) if t in model.eos_token_ids]
    return out[: ends[0] + 1] if ends else out


def genai_greedy(model: og.Model, ids: list[int]) -> list[int]:
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + NEW_TOKENS)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("all_logits", [False, True])
def test_genai_picks_edgeinfer_greedy_ids_on_raw_prompts(all_logits, chatml_pkg, qwen2_dir, tmp_path):
    """With --all-logits the logits keep their sequence dim and genai picks the last row itself."""
    folder = export_tiny(qwen2_dir, tmp_path / "all", all_logits=True) if all_logits else chatml_pkg
    ours, theirs = edgeinfer.load(folder), og.Model(str(folder))
    tokenizer = og.Tokenizer(theirs)
    for prompt in PROMPTS:
        ids = ours.encode_prompt(prompt, raw=True)
        assert [int(i) for i in tokenizer.encode(prompt)] == ids
        expected = edgeinfer_greedy(ours, ids)
        assert len(expected) > 4
        assert genai_greedy(theirs, ids) == expected


def test_genai_runs_to_its_max_length(qwen2_dir, tmp_path):
    """An exact-speculation package: genai's cache is max_length rows and decode's padding row lands one past the last
    token, so genai_config leaves one row free: the last step fits."""
    folder = export_tiny(qwen2_dir, tmp_path / "b32", block_size=32)
    assert load_manifest(folder).kv_cache["spare_rows"] == 1
    ours, theirs = edgeinfer.load(folder), og.Model(str(folder))
    ids = ours.encode_prompt(PROMPTS[2], raw=True)
    assert genai_greedy(theirs, ids) == edgeinfer_greedy(ours, ids)
    params = og.GeneratorParams(theirs)
    max_length = json.loads((folder / GENAI_CONFIG).read_text())["search"]["max_length"]
    params.set_search_options(do_sample=False, min_length=max_length)  # no eos before max_length
    generator = og.Generator(theirs, params)
    generator.append_tokens(ids)
    steps = 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    assert len(ids) + steps == max_length == load_manifest(folder).context_length - 1


@pytest.mark.parametrize("package", ["chatml", "preset"])
def test_genai_chat_template_gives_edgeinfer_prompt_and_tokens(package, chatml_pkg, preset_pkg):
    """genai's apply_chat_template + encode give the ids edgeinfer's chat format gives, then the same greedy ids.
    The preset is DeepSeek-R1's template (bos written by the template, the reply opened with <think>)."""
    folder = chatml_pkg if package == "chatml" else preset_pkg
    ours, theirs = edgeinfer.load(folder), og.Model(str(folder))
    tokenizer = og.Tokenizer(theirs)
    conversations = [
        [{"role": "user", "content": "Write a haiku about rain."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Count to three."}],
    ]
    for messages in conversations:
        text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        ids = [int(i) for i in tokenizer.encode(text)]
        assert ids == ours.encode_prompt(messages)
        assert genai_greedy(theirs, ids) == edgeinfer_greedy(ours, ids)


def test_genai_config_is_written_from_the_manifest_and_hashed(chatml_pkg):
    manifest = load_manifest(chatml_pkg)
    written = json.loads((chatml_pkg / GENAI_CONFIG).read_text())
    assert written == genai_config(manifest)
    assert manifest.files[GENAI_CONFIG]["sha256"] == sha256_of(chatml_pkg / GENAI_CONFIG)
    decoder = written["model"]["decoder"]
    spec = manifest.spec
    assert (decoder["num_hidden_layers"], decoder["head_size"], decoder["num_key_value_heads"]) == \
        (spec.num_layers, spec.head_dim, spec.num_kv_heads)
    assert written["model"]["context_length"] == manifest.context_length
    # decode's padding row (dynamic_graph.spare_cache_rows) lands one row past the last token: genai leaves it free
    assert written["search"]["max_length"] == manifest.context_length - manifest.kv_cache["spare_rows"]
    assert written["model"]["eos_token_id"] == manifest.tokenizer["eos_token_ids"]
    assert decoder["session_options"]["provider_options"] == []
    assert decoder["filename"] == GENAI_DECODER and manifest.files[GENAI_DECODER]["sha256"]
    assert json.loads((chatml_pkg / "tokenizer_config.json").read_text())["tokenizer_class"]


def test_genai_graph_shares_the_weights_and_keeps_edgeinfer_graph_as_it_was(chatml_pkg):
    """genai's view adds only the mask nodes: the same weights file, no tensor stored twice, and edgeinfer's own graph
    still takes seqlens_k, total_sequence_length and logits_start (speculation's verify runs)."""
    ours = onnx.load(str(chatml_pkg / "model.onnx"), load_external_data=False).graph
    theirs = onnx.load(str(chatml_pkg / GENAI_DECODER), load_external_data=False).graph
    assert [i.name for i in theirs.input][:2] == ["input_ids", "attention_mask"]
    assert {"seqlens_k", "total_sequence_length", LOGITS_START} <= {i.name for i in ours.input}
    assert not {"seqlens_k", "total_sequence_length", LOGITS_START} & {i.name for i in theirs.input}
    # genai treats logits as last-position-only when their sequence dim is the literal 1 (Model::IsPruned)
    logits = next(o for o in theirs.output if o.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1
    external = {t.name: {e.key: e.value for e in t.external_data} for t in ours.initializer if t.external_data}
    shared = {t.name: {e.key: e.value for e in t.external_data} for t in theirs.initializer if t.external_data}
    assert external and shared == external  # every weight read from model.onnx.data at the same place
    assert (chatml_pkg / GENAI_DECODER).stat().st_size < (chatml_pkg / "model.onnx").stat().st_size + 4096


def test_grouped_attention_packages_are_not_genai_folders(qwen2_dir, tmp_path):
    """The grouped attention's row cache is not genai's cache layout: no genai files rather than ones that fail."""
    folder = export_tiny(qwen2_dir, tmp_path / "grouped", attention="grouped")
    assert not (folder / GENAI_CONFIG).exists() and not (folder / GENAI_DECODER).exists()
    assert GENAI_CONFIG not in load_manifest(folder).files


def test_changed_genai_config_fails_the_sha256_check(chatml_pkg, tmp_path):
    import shutil

    copy = Path(shutil.copytree(chatml_pkg, tmp_path / "pkg"))
    text = (copy / GENAI_CONFIG).read_text()
    assert '"max_length": 256' in text
    (copy / GENAI_CONFIG).write_text(text.replace('"max_length": 256', '"max_length": 999'))  # same size
    with pytest.raises(PackageError, match="sha256"):
        edgeinfer.load(copy)


def test_cuda_package_asks_genai_for_cuda_graphs(tmp_path):
    """No GPU here: the config and the graph's interface only (the GPU run is bench/cuda_h100.sh's genai step)."""
    folder = export_tiny("preset:tiny-qwen2", tmp_path / "cuda", target="cuda", precision="fp16", context_length=64)
    config = json.loads((folder / GENAI_CONFIG).read_text())
    assert config["model"]["decoder"]["session_options"]["provider_options"] == [{"cuda": {"enable_cuda_graph": "1"}}]
    graph = onnx.load(str(folder / GENAI_DECODER), load_external_data=False).graph
    mask = next(i for i in graph.input if i.name == "attention_mask")
    assert mask.type.tensor_type.elem_type == onnx.TensorProto.INT64
    # logits of the last position only; edgeinfer's greedy shortcut is not genai's
    assert [(o.name, o.type.tensor_type.shape.dim[1].dim_value) for o in graph.output if o.name in ("logits", "next_token")] == \
        [("logits", 1)]
    assert np.dtype(load_manifest(folder).activation_dtype) == np.float16
