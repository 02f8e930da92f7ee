"""GGUF files (llama.cpp's format): metadata to ArchSpec, tensors dequantized to float32 one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..architecture import ArchSpec, checked_spec
from ..errors import SourceError
from .gguf_header import check_gguf_header
from .sources import TokenizerFiles

# GGUF tensor names -> Hugging Face names ({i} is the layer index).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_FAMILIES = {"qwen2": "qwen2", "llama": "llama"}
# ArchSpec field -> GGUF metadata key (after "{arch}."), so that errors name the key the file holds.
_GGUF_FIELDS = {
    "hidden_size": "embedding_length", "num_layers": "block_count", "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
    "intermediate_size": "feed_forward_length", "vocab_size": "tokenizer.ggml.tokens (its length)",
    "max_position_embeddings": "context_length", "rope_theta": "rope.freq_base",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


class GGUFSource:
    random_weights = False

    def __init__(self, path: Path):
        import gguf

        self._tokenizer: TokenizerFiles | None = None
        check_gguf_header(path)  # GGUFReader trusts the header's counts: a crafted one exhausts memory
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as exc:  # gguf raises ValueError, struct.error, IndexError... on a damaged file
            raise SourceError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}): re-download it") from None
        self.path = path
        self.description = f"gguf:{path.resolve()}"
        arch = self._field("general.architecture")
        if arch not in _FAMILIES:
            raise SourceError(f"{path}: GGUF architecture {arch!r} is not supported: edgeinfer exports qwen2 and llama")
        self.spec = self._spec(arch)
        self._tensors = {hf_name(t.name): t for t in self.reader.tensors if hf_name(t.name)}
        missing = [n for n in self.spec.tensor_names() if n not in self._tensors and n != "lm_head.weight"]
        if missing:
            raise SourceError(f"{path} lacks {len(missing)} tensors (first: {missing[0]}): the file is incomplete")

    def _field(self, key: str, default=None):
        field = self.reader.fields.get(key)
        try:
            return default if field is None else field.contents()
        except (UnicodeDecodeError, IndexError, ValueError) as exc:
            raise SourceError(f"{self.path}: GGUF metadata {key} is unreadable ({exc}): re-download the file") from None

    def _spec(self, arch: str) -> ArchSpec:
        k = lambda name, default=None: self._field(f"{arch}.{name}", default)  # noqa: E731
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        heads = k("attention.head_count")
        has_output = any(t.name == "output.weight" for t in self.reader.tensors)
        return checked_spec(
            f"{self.path} (GGUF metadata)",
            {field: key if key.startswith("tokenizer.") else f"{arch}.{key}" for field, key in _GGUF_FIELDS.items()},
            family=_FAMILIES[arch],
            hidden_size=k("embedding_length"),
            num_layers=k("block_count"),
            num_heads=heads,
            num_kv_heads=k("attention.head_count_kv", heads),
            head_dim=k("attention.key_length"),
            intermediate_size=k("feed_forward_length"),
            vocab_size=None if tokens is None else len(tokens.data),
            rope_theta=k("rope.freq_base", 10000.0),
            rms_norm_eps=k("attention.layer_norm_rms_epsilon", 1e-6),
            max_position_embeddings=k("context_length", 4096),
            tie_word_embeddings=not has_output,
        )

    def stored_bits(self, name: str) -> int:
        """Bits per weight the GGUF stored NAME with (Q4_K -> 4, Q6_K -> 6, F16 -> 16...)."""
        tensor = self._tensors.get(name) or self._tensors["model.embed_tokens.weight"]
        kind = tensor.tensor_type.name
        if kind.startswith(("Q", "IQ")):
            return int(kind.lstrip("IQ")[0])
        return {"F32": 32, "F16": 16, "BF16": 16}.get(kind, 16)

    def tensor(self, name: str) -> np.ndarray:
        import gguf

        tensor = self._tensors.get(name) or self._tensors["model.embed_tokens.weight"]
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (ValueError, NotImplementedError) as exc:
            raise SourceError(f"{self.path}: cannot dequantize {tensor.name} ({exc}): re-download the file") from None
        array = np.asarray(array, dtype=np.float32).reshape(self.spec.tensor_shape(name))
        if self.spec.family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.spec.num_heads if "q_proj" in name else self.spec.num_kv_heads
            array = _unpermute_rope(array, heads)
        return array

    def tokenizer(self) -> TokenizerFiles:
        """Built once: reading the vocabulary out of the GGUF takes ~2 s, and an export asks four times."""
        from .gguf_tokenizer import tokenizer_from_gguf

        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_gguf(self.reader)
        return self._tokenizer


def _unpermute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's converter interleaves each head's rotary halves for Llama; undo it to get HF's layout.
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
