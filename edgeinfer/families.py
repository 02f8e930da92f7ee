"""The decoder families edgeinfer exports: each one is data, read by both graph builders and every weight source.

Every family shares the Llama layout (embedding, N x [RMSNorm, attention with RoPE, RMSNorm, gated MLP], RMSNorm,
lm_head). A Family names only where it departs from it; the numbers of one checkpoint (sizes, rope scaling, sliding
windows, layers without RoPE) live in its ArchSpec (architecture.py).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LayerNorms:
    """Which RMSNorm of a layer (its Hugging Face leaf name) sits where; None: the family has no norm there."""

    attention_in: str = "input_layernorm"
    attention_out: str | None = None  # on the attention's output, before the residual add (Gemma's sandwich)
    mlp_in: str = "post_attention_layernorm"
    mlp_out: str | None = None  # on the MLP's output, before the residual add

    def names(self) -> list[str]:
        return [n for n in (self.attention_in, self.attention_out, self.mlp_in, self.mlp_out) if n]


LLAMA_NORMS = LayerNorms()
SANDWICH_NORMS = LayerNorms("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                            "post_feedforward_layernorm")


@dataclass(frozen=True)
class Family:
    """What differs between decoder families that share the Llama layout."""

    name: str
    hf_architectures: tuple[str, ...]
    hf_model_types: tuple[str, ...]
    gguf_architectures: tuple[str, ...] = ()  # general.architecture values a GGUF of this family carries
    special: str = ""  # what sets the family apart, for people (README's families table, errors)
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head of q and k, before RoPE (q_norm / k_norm)
    norms: LayerNorms = LLAMA_NORMS
    norm_offset: float = 0.0  # checkpoints store RMSNorm gains minus this (Gemma multiplies by 1 + w)
    scaled_embeddings: bool = False  # embeddings times sqrt(hidden_size) before the first layer (Gemma)
    activation: str = "silu"  # the gated MLP's: "silu" or "gelu_tanh"
    fused_checkpoint: bool = False  # checkpoints store qkv_proj and gate_up_proj fused (Phi-3)
    sliding_pattern: int | None = None  # every Nth layer global, the rest sliding, when config.json has no layer_types
    tied_by_default: bool = False  # transformers' tie_word_embeddings default, for configs that leave it out
    # transformers' defaults for keys a config may leave out (a multimodal checkpoint's text_config lists only
    # what differs from them)
    hf_defaults: dict = field(default_factory=dict)
    gguf_permuted_rope: bool = False  # llama.cpp's converter interleaves each q/k head's rotary halves

    @property
    def rotatable(self) -> bool:
        """A residual-stream rotation (export/rotation.py) folds each norm's gain into the matmuls after it; a norm on
        a branch's output (the sandwich) has no matmul after it before the residual add, so there it cannot."""
        return self.norms.attention_out is None and self.norms.mlp_out is None


# Gemma3TextConfig's defaults: the text_config of Gemma 3 4B/12B/27B (multimodal checkpoints) lists only what differs.
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), ("qwen2",), "q/k/v bias", qkv_bias=True),
        Family("llama", ("LlamaForCausalLM",), ("llama",), ("llama",),
               "llama3 / linear / dynamic / yarn rope scaling; tied embeddings (3.2 1B/3B); SmolLM2 is this family",
               gguf_permuted_rope=True),
        Family("mistral", ("MistralForCausalLM", "MinistralForCausalLM"), ("mistral", "ministral"), (),
               "sliding-window attention where configured (Ministral: interleaved with full layers)",
               gguf_permuted_rope=True),
        Family("qwen3", ("Qwen3ForCausalLM",), ("qwen3",), ("qwen3",),
               "per-head q/k RMSNorm, explicit head_dim (q wider than hidden), no qkv bias", qk_norm=True),
        Family("gemma3", ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"), ("gemma3_text", "gemma3"), ("gemma3",),
               "5 sliding-window layers per global one (own window and rope theta), (1 + w) RMSNorm, norms before "
               "and after attention and MLP, sqrt(hidden) embedding scale, GELU-tanh, query_pre_attn_scalar, q/k norms",
               qk_norm=True, norms=SANDWICH_NORMS, norm_offset=1.0, scaled_embeddings=True, activation="gelu_tanh",
               sliding_pattern=6, tied_by_default=True, hf_defaults=GEMMA3_TEXT_DEFAULTS),
        Family("phi3", ("Phi3ForCausalLM",), ("phi3",), ("phi3",),
               "fused qkv_proj / gate_up_proj in the checkpoint, partial rotary (Phi-4-mini: 3/4), longrope",
               fused_checkpoint=True),
        Family("smollm3", ("SmolLM3ForCausalLM",), ("smollm3",), ("smollm3",),
               "every 4th layer without RoPE (NoPE)", gguf_permuted_rope=True, tied_by_default=True),
    )
}


def family_for(model_type: str, architectures: tuple[str, ...]) -> Family | None:
    """The family a config.json's model_type or architectures name; None if none does."""
    return next((f for f in FAMILIES.values()
                 if model_type in f.hf_model_types or set(architectures) & set(f.hf_architectures)), None)


def nearest_family(name: str) -> str:
    """The supported family whose model types, architectures or GGUF names read most like NAME (for errors)."""
    candidates = {alias.lower(): f.name for f in FAMILIES.values()
                  for alias in (f.name, *f.hf_model_types, *f.hf_architectures, *f.gguf_architectures)}
    match = difflib.get_close_matches(name.lower(), list(candidates), n=1, cutoff=0.0)
    return candidates[match[0]] if match else "llama"


def supported_families() -> str:
    return ", ".join(FAMILIES)
