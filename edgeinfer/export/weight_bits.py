"""Which weights keep 8 bits in a 4-bit export: the same choice for the cpu/cuda (MatMulNBits) and qnn (QDQ) graphs."""

from __future__ import annotations

from .options import ExportOptions
from .sources import WeightSource

# Each layer's linear weights: (Hugging Face name under model.layers.N., the static graph's node name)
LAYER_LINEARS = (("self_attn.q_proj", "q_proj"), ("self_attn.k_proj", "k_proj"), ("self_attn.v_proj", "v_proj"),
                 ("self_attn.o_proj", "o_proj"), ("mlp.gate_proj", "gate_proj"), ("mlp.up_proj", "up_proj"),
                 ("mlp.down_proj", "down_proj"))


ATTENTION_AND_DOWN = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "down_proj.weight")


def more_bits_layer(layer: int, num_layers: int) -> bool:
    """llama.cpp's Q4_K_M rule (use_more_bits): the first and last eighth of layers, and every third between."""
    eighth = num_layers // 8
    return layer < eighth or layer >= num_layers - eighth or (layer - eighth) % 3 == 2


def weight_bits(source: WeightSource, names: list[str], options: ExportOptions) -> int:
    """4 bits, or 8 for the tensors 4 bits hurts most: v_proj and down_proj in some layers (as Q4_K_M does),
    or, for a source that says how it stored each tensor (GGUF), wherever it kept more than 4 bits."""
    if not options.mixed_bits:
        return 4
    stored = [source.stored_bits(n) for n in names]
    if any(bits is not None for bits in stored):
        return 8 if any(bits is not None and bits > 4 for bits in stored) else 4
    if options.eight_bit_rule == "attention-down":
        return 8 if any(n.endswith(ATTENTION_AND_DOWN) for n in names) else 4
    sensitive = [n for n in names if n.endswith(("v_proj.weight", "down_proj.weight"))]
    layers = [int(n.split(".")[2]) for n in sensitive]
    return 8 if any(more_bits_layer(i, source.spec.num_layers) for i in layers) else 4


def eight_bit_graph_weights(source: WeightSource, options: ExportOptions) -> set[str]:
    """The static graph's weight initializers (model.layers.N.<proj>.weight) that weight_bits gives 8 bits."""
    names = set()
    for layer in range(source.spec.num_layers):
        for hf_name, graph_name in LAYER_LINEARS:
            if weight_bits(source, [f"model.layers.{layer}.{hf_name}.weight"], options) == 8:
                names.add(f"model.layers.{layer}.{graph_name}.weight")
    return names


def head_bits(source: WeightSource, options: ExportOptions) -> int:
    """lm_head's bits (0: float): options.lm_head_bits when given; otherwise 4 for an untied float source under the
    attention-down rule (its bytes pay for 8-bit attention and down_proj: on the real 1.5B an 8-bit lm_head measured
    as good as float, and 4 bits cost less than what the 8-bit attention buys back), 8 elsewhere (a GGUF's own
    choice, or a tied table that the embedding shares at 8 bits)."""
    if options.lm_head_bits is not None:
        return options.lm_head_bits
    head = "model.embed_tokens.weight" if source.spec.tie_word_embeddings else "lm_head.weight"
    from_floats = source.stored_bits(head) is None
    if options.mixed_bits and options.eight_bit_rule == "attention-down" and from_floats and not source.spec.tie_word_embeddings:
        return 4
    return 8
