"""Write a float32 GGUF from a tiny Hugging Face folder, laid out the way llama.cpp's converter does
(convert_hf_to_gguf.py): its architecture names and keys, q/k rows permuted for the Llama-style families, Gemma's
norms stored as 1 + w, Phi-3's fused tensors kept fused, llama3 scaling as the rope_freqs tensor of divisors and
longrope as rope_factors_long / _short."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from edgeinfer.export.gguf_source import _GLOBAL_NAMES, gguf_layer_names
from edgeinfer.export.safetensors_reader import SafetensorsFile
from edgeinfer.families import FAMILIES
from edgeinfer.hf_config import spec_from_hf_config


def _permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _llama3_divisors(spec) -> list[float]:
    """llama.cpp's rope_freqs for llama3 scaling: one divisor per frequency."""
    s = spec.rope_scaling
    dims, old = spec.rotary_dims, s["original_max_position_embeddings"]
    freqs = 1.0 / (spec.rope_theta ** (np.arange(0, dims, 2, dtype=np.float32) / dims))
    low, high = old / s["low_freq_factor"], old / s["high_freq_factor"]
    divisors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < high:
            divisors.append(1.0)
        elif wavelength > low:
            divisors.append(s["factor"])
        else:
            smooth = (old / wavelength - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
            divisors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return divisors


def _write_hparams(writer, spec, config: dict) -> None:
    import gguf

    writer.add_block_count(spec.num_layers)
    writer.add_context_length(spec.max_position_embeddings)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)
    if config.get("head_dim"):
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    if spec.rotary_dim:
        writer.add_rope_dimension_count(spec.rotary_dim)
    if spec.sliding_window and spec.family in ("gemma3", "phi3"):
        writer.add_sliding_window(spec.sliding_window)
    if spec.local_rope_theta is not None:
        writer.add_rope_freq_base_swa(spec.local_rope_theta)
    scaling = spec.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    if scaling.get("rope_type") == "longrope":
        writer.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
        factor = spec.max_position_embeddings / scaling["original_max_position_embeddings"]
        attn = math.sqrt(1 + math.log(factor) / math.log(scaling["original_max_position_embeddings"])) if factor > 1 else 1.0
        writer.add_rope_scaling_attn_factors(attn)


def _write_tokenizer(writer, folder: Path, spec) -> None:
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
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    writer.add_chat_template(tok_config["chat_template"])


def quantized_raw(array: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """ARRAY [N, K] in GGUF type KIND as raw blocks: gguf-py's own quantizer where it has one (Q4_0, Q4_1, Q8_0...);
    for the K-quants, which gguf-py only dequantizes, random codes and sub-block scales under float16 superblock
    scales sized to ARRAY's spread (the weights then are not ARRAY's, but every field of the format is exercised)."""
    import gguf
    from gguf.constants import GGML_QUANT_SIZES

    kind_id = gguf.GGMLQuantizationType[kind]
    try:
        return gguf.quants.quantize(array, kind_id)
    except NotImplementedError:
        pass
    per_block, size = GGML_QUANT_SIZES[kind_id]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (array.size // per_block, size), dtype=np.uint8)
    spread = float(np.abs(array).max())

    def put(at: int, values) -> None:
        blocks[:, at : at + 2] = np.asarray(values, dtype=np.float16).reshape(-1, 1).view(np.uint8)

    count = len(blocks)
    if kind in ("Q4_K", "Q5_K"):  # weight = d * sc * q - dmin * m; sc, m < 64, q < 16 (Q4_K) or 32 (Q5_K)
        levels = 63 * (15 if kind == "Q4_K" else 31)
        put(0, rng.uniform(0.5, 1.0, count) * 2 * spread / levels)
        put(2, rng.uniform(0.5, 1.0, count) * spread / 63)
    elif kind == "Q6_K":  # weight = d * sc * (q - 32); sc int8, q < 64
        put(size - 2, rng.uniform(0.5, 1.0, count) * spread / (128 * 32))
    else:
        raise NotImplementedError(f"no test quantizer for {kind}")
    return blocks.reshape(array.shape[0], -1)


def write_gguf_from_hf(folder: Path, out: Path, types: dict[str, str] | None = None) -> Path:
    """TYPES: GGUF tensor name suffix ("attn_v.weight", "token_embd.weight") -> GGUF type to store it in (else F32)."""
    import gguf

    config = json.loads((folder / "config.json").read_text())
    spec = spec_from_hf_config(config)
    family = FAMILIES[spec.family]
    arch = family.gguf_architectures[0] if family.gguf_architectures else "llama"
    writer = gguf.GGUFWriter(str(out), arch)
    _write_hparams(writer, spec, config)
    _write_tokenizer(writer, folder, spec)

    tensors = SafetensorsFile(folder / "model.safetensors")
    to_gguf = {hf: g for g, hf in _GLOBAL_NAMES.items()}
    to_gguf_layer = {hf: g for g, hf in gguf_layer_names(family).items()}
    for name in dict.fromkeys(spec.checkpoint_tensor(n)[0] for n in spec.tensor_names()):
        array = np.asarray(tensors.tensor(name), dtype=np.float32)
        if name in to_gguf:
            gguf_name = to_gguf[name]
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            gguf_name = f"blk.{layer}.{to_gguf_layer[rest]}"
        if family.gguf_permuted_rope and name.endswith(("q_proj.weight", "k_proj.weight")):
            array = _permute_rope(array, spec.num_heads if "q_proj" in name else spec.num_kv_heads)
        if family.norm_offset and name.endswith("norm.weight"):
            array = array + np.float32(family.norm_offset)
        kind = next((t for suffix, t in (types or {}).items() if gguf_name.endswith(suffix)), None)
        if kind is None:
            writer.add_tensor(gguf_name, array)
        else:
            writer.add_tensor(gguf_name, quantized_raw(array, kind, seed=len(gguf_name)),
                              raw_dtype=gguf.GGMLQuantizationType[kind])
    scaling = spec.rope_scaling or {}
    if scaling.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", np.asarray(_llama3_divisors(spec), dtype=np.float32))
    if scaling.get("rope_type") == "longrope":
        writer.add_tensor("rope_factors_long.weight", np.asarray(scaling["long_factor"], dtype=np.float32))
        writer.add_tensor("rope_factors_short.weight", np.asarray(scaling["short_factor"], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
