"""GGUF files (llama.cpp's format): metadata to ArchSpec, tensors dequantized to float32 one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..architecture import FULL, SLIDING, ArchSpec, checked_spec
from ..errors import SourceError
from ..families import FAMILIES, Family, nearest_family
from .gguf_blocks import ExactBlocks, exact_blocks
from .gguf_header import check_gguf_header
from .sources import TokenizerFiles

# GGUF tensor names -> Hugging Face names ({i} is the layer index). The norms are named by their place in the layer
# (LayerNorms), which the family maps to its own Hugging Face names; fused tensors (Phi-3) keep their fused names.
_LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_qkv.weight": "self_attn.qkv_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_NORM_PLACES = {"attn_norm.weight": "attention_in", "post_attention_norm.weight": "attention_out",
                "ffn_norm.weight": "mlp_in", "post_ffw_norm.weight": "mlp_out"}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_FAMILIES = {arch: f.name for f in FAMILIES.values() for arch in f.gguf_architectures}
# ArchSpec field -> GGUF metadata key (after "{arch}."), so that errors name the key the file holds.
_GGUF_FIELDS = {
    "hidden_size": "embedding_length", "num_layers": "block_count", "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
    "intermediate_size": "feed_forward_length", "vocab_size": "tokenizer.ggml.tokens (its length)",
    "max_position_embeddings": "context_length", "rope_theta": "rope.freq_base",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon", "rope_scaling": "rope.scaling.type",
    "rotary_dim": "rope.dimension_count", "layer_types": "attention.sliding_window_pattern",
    "sliding_window": "attention.sliding_window", "local_rope_theta": "rope.freq_base_swa",
    "layers_without_rope": "(NoPE layers)", "attention_scale": "attention.key_length",
}
# What llama.cpp hard-codes where the file says nothing: Gemma 3's local rope base and SmolLM3's NoPE interval.
_GEMMA3_LOCAL_THETA = 10000.0
_SMOLLM3_NOPE_INTERVAL = 4


def gguf_layer_names(family: Family) -> dict[str, str]:
    """GGUF leaf name -> Hugging Face leaf name of one layer's tensors, for FAMILY."""
    names = dict(_LAYER_NAMES)
    if family.fused_checkpoint:
        names["ffn_up.weight"] = "mlp.gate_up_proj.weight"  # llama.cpp's Phi-3 keeps gate|up in ffn_up
    for gguf_name, place in _NORM_PLACES.items():
        if getattr(family.norms, place):
            names[gguf_name] = f"{getattr(family.norms, place)}.weight"
    return names


def hf_name(gguf_name: str, family: Family) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    layer_names = gguf_layer_names(family)
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in layer_names:
        return f"model.layers.{parts[1]}.{layer_names[parts[2]]}"
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
        if arch not in GGUF_FAMILIES:
            raise SourceError(
                f"{path}: GGUF architecture {arch!r} is not supported: edgeinfer reads {', '.join(GGUF_FAMILIES)}; "
                f"the nearest is {nearest_family(str(arch))}, which this file is not"
            )
        family = FAMILIES[GGUF_FAMILIES[arch]]
        self._by_name = {t.name: t for t in self.reader.tensors}
        self.spec = self._spec(arch, family)
        self._tensors = {hf_name(t.name, family): t for t in self.reader.tensors if hf_name(t.name, family)}
        missing = [n for n in self._stored_names() if n not in self._tensors and n != "lm_head.weight"]
        if missing:
            raise SourceError(f"{path} lacks {len(missing)} tensors (first: {missing[0]}): the file is incomplete")

    def _field(self, key: str, default=None):
        field = self.reader.fields.get(key)
        try:
            return default if field is None else field.contents()
        except (UnicodeDecodeError, IndexError, ValueError) as exc:
            raise SourceError(f"{self.path}: GGUF metadata {key} is unreadable ({exc}): re-download the file") from None

    def _spec(self, arch: str, family: Family) -> ArchSpec:
        k = lambda name, default=None: self._field(f"{arch}.{name}", default)  # noqa: E731
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        heads, layers = k("attention.head_count"), k("block_count")
        head_dim = k("attention.key_length")
        rotary = k("rope.dimension_count")
        window = k("attention.sliding_window") or None  # llama.cpp writes 0 for "none" (Phi-4)
        return checked_spec(
            f"{self.path} (GGUF metadata)",
            {field: key if key.startswith(("tokenizer.", "(")) else f"{arch}.{key}" for field, key in _GGUF_FIELDS.items()},
            family=family.name,
            hidden_size=k("embedding_length"),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=k("attention.head_count_kv", heads),
            head_dim=head_dim,
            intermediate_size=k("feed_forward_length"),
            vocab_size=None if tokens is None else len(tokens.data),
            rope_theta=k("rope.freq_base", 10000.0),
            rms_norm_eps=k("attention.layer_norm_rms_epsilon", 1e-6),
            max_position_embeddings=k("context_length", 4096),
            tie_word_embeddings="output.weight" not in self._by_name,
            rope_scaling=self._rope_scaling(arch),
            rotary_dim=rotary if isinstance(rotary, int) and rotary != (head_dim or 0) and rotary else None,
            **self._layer_attention(arch, family, layers, window),
        )

    def _rope_scaling(self, arch: str) -> dict | None:
        """The rope scaling llama.cpp's converter wrote: metadata for linear / yarn, tensors for llama3 (rope_freqs:
        one divisor per frequency) and longrope (Phi-3: rope_factors_long / _short)."""
        k = lambda name, default=None: self._field(f"{arch}.{name}", default)  # noqa: E731
        original = k("rope.scaling.original_context_length")
        if "rope_factors_long.weight" in self._by_name:
            return {"rope_type": "longrope", "original_max_position_embeddings": original,
                    "attention_factor": k("rope.scaling.attn_factor", 1.0),
                    "long_factor": self._floats("rope_factors_long.weight"),
                    "short_factor": self._floats("rope_factors_short.weight")}
        if "rope_freqs.weight" in self._by_name:
            return {"rope_type": "frequency_divisors", "divisors": self._floats("rope_freqs.weight")}
        kind = k("rope.scaling.type", "none")
        if kind == "linear":
            return {"rope_type": "linear", "factor": k("rope.scaling.factor")}
        if kind == "yarn":
            return {"rope_type": "yarn", "factor": k("rope.scaling.factor"), "original_max_position_embeddings": original}
        return None

    def _layer_attention(self, arch: str, family: Family, layers, window: int | None) -> dict:
        """Sliding layers, the local rope base, NoPE layers and Gemma 3's q.k scale, as llama.cpp reads them."""
        k = lambda name, default=None: self._field(f"{arch}.{name}", default)  # noqa: E731
        types = ()
        if window and isinstance(layers, int):
            pattern = k("attention.sliding_window_pattern", family.sliding_pattern)
            if isinstance(pattern, list):  # one bool per layer: sliding
                types = tuple(SLIDING if slides else FULL for slides in pattern)
            elif isinstance(pattern, int) and pattern > 0:
                types = tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers))
            else:
                types = (SLIDING,) * layers
        values = {"layer_types": types, "sliding_window": window if types else None}
        if family.name == "gemma3" and types:
            values["local_rope_theta"] = k("rope.freq_base_swa", _GEMMA3_LOCAL_THETA)
        hidden, heads = k("embedding_length"), k("attention.head_count")
        if family.name == "gemma3" and layers == 62 and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
            values["attention_scale"] = (hidden / heads) ** -0.5  # llama.cpp: Gemma 3 27B scales q.k by hidden / heads
        if family.name == "smollm3" and isinstance(layers, int):
            values["layers_without_rope"] = tuple(i for i in range(layers) if (i + 1) % _SMOLLM3_NOPE_INTERVAL == 0)
        return values

    def _floats(self, tensor_name: str) -> list[float]:
        return [float(v) for v in np.asarray(self._by_name[tensor_name].data, dtype=np.float64).reshape(-1)]

    def _stored_names(self) -> list[str]:
        """The tensors this file must hold: fused ones (Phi-3) by their fused names."""
        return list(dict.fromkeys(self.spec.checkpoint_tensor(n)[0] for n in self.spec.tensor_names()))

    def _stored(self, name: str):
        """The GGUF tensor holding NAME (the embedding for a tied lm_head) and the rows of it that are NAME."""
        stored, rows = self.spec.checkpoint_tensor(name)
        if stored not in self._tensors and name in self._tensors:  # a Phi-3 file with q, k, v apart
            stored, rows = name, None
        tensor = self._tensors.get(stored) or self._tensors["model.embed_tokens.weight"]
        return tensor, stored if stored in self._tensors else "model.embed_tokens.weight", rows

    def stored_bits(self, name: str) -> int | None:
        """Bits per weight the GGUF stored NAME with (Q4_K -> 4, Q6_K -> 6...); None for a float tensor (F32, F16,
        BF16): a float file made no choice of bits, so the 4-bit export applies its own rule (weight_bits.py), as
        for safetensors. (A float GGUF got 8 bits for every matmul before.)"""
        tensor = self._stored(name)[0]
        kind = tensor.tensor_type.name
        if kind.startswith(("Q", "IQ")):
            return int(kind.lstrip("IQ")[0])
        return None

    def tensor(self, name: str) -> np.ndarray:
        import gguf

        tensor, stored, rows = self._stored(name)
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (ValueError, NotImplementedError) as exc:
            raise SourceError(f"{self.path}: cannot dequantize {tensor.name} ({exc}): re-download the file") from None
        array = np.asarray(array, dtype=np.float32).reshape(self.spec.tensor_shape(stored))
        if rows is not None:
            array = np.ascontiguousarray(array[rows])
        if self.spec.family_data.gguf_permuted_rope and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.spec.num_heads if "q_proj" in name else self.spec.num_kv_heads
            array = _unpermute_rope(array, heads)
        return array

    def exact_blocks(self, name: str) -> ExactBlocks | None:
        """NAME in the file's own blocks (gguf_blocks.py), rows as tensor() gives them; None when its type has no
        exact MatMulNBits form (the exporter then requantizes tensor())."""
        tensor, stored, rows = self._stored(name)
        shape = self.spec.tensor_shape(stored)
        if len(shape) != 2:
            return None
        try:
            blocks = exact_blocks(tensor.data, tensor.tensor_type.name, tuple(shape))
        except ValueError as exc:  # a byte count that does not match the shape
            raise SourceError(f"{self.path}: cannot read {tensor.name}'s blocks ({exc}): re-download the file") from None
        if blocks is None:
            return None
        if rows is not None:
            blocks = blocks.rows(rows)
        if self.spec.family_data.gguf_permuted_rope and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.spec.num_heads if "q_proj" in name else self.spec.num_kv_heads
            order = _unpermute_rope(np.arange(blocks.shape[0]).reshape(-1, 1), heads).reshape(-1)
            blocks = blocks.rows(order)
        return blocks

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
