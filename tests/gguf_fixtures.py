"""Write a float32 GGUF from a tiny Hugging Face folder, laid out the way llama.cpp's converter does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeinfer.architecture import ArchSpec
from edgeinfer.export.gguf_source import _GLOBAL_NAMES, _LAYER_NAMES
from edgeinfer.export.safetensors_reader import SafetensorsFile


def _permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write_gguf_from_hf(folder: Path, out: Path) -> Path:
    import gguf

    config = json.loads((folder / "config.json").read_text())
    spec = ArchSpec.from_hf_config(config)
    arch = spec.family
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_block_count(spec.num_layers)
    writer.add_context_length(spec.max_position_embeddings)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)

    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [a["content"] for a in tok["added_tokens"]]
    tokens += ["ab"]  # one merge, so the GGUF carries a merges list as real ones do
    tokens += [f"[PAD{i}]" for i in range(spec.vocab_size - len(tokens))]
    types = [1] * len(vocab) + [3] * len(tok["added_tokens"]) + [1] + [5] * (spec.vocab_size - len(tokens[: len(vocab)]) - len(tok["added_tokens"]) - 1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["a b"])
    eos = tokens.index("<|im_end|>")
    writer.add_eos_token_id(eos)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    writer.add_chat_template(tok_config["chat_template"])

    tensors = SafetensorsFile(folder / "model.safetensors")
    to_gguf = {hf: g for g, hf in _GLOBAL_NAMES.items()}
    for name in spec.tensor_names():
        array = np.asarray(tensors.tensor(name), dtype=np.float32)
        if name in to_gguf:
            gguf_name = to_gguf[name]
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            gguf_name = f"blk.{layer}." + next(g for g, hf in _LAYER_NAMES.items() if hf == rest)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            array = _permute_rope(array, spec.num_heads if "q_proj" in name else spec.num_kv_heads)
        writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
