"""fp32 exports match transformers on the same weights; W4A16 stays close; GGUF and HF folders agree."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgeinfer.graph_contract import cache_rows
from edgeinfer.package import load_manifest

from .conftest import export_tiny, reference_logits, reference_model


class OrtDecoder:
    """Drives the exported graph with onnxruntime directly (no edgeinfer runtime), copying the cache each step.
    BNSH caches go in whole and come back whole; SH caches go in as the rows held and the new rows come back."""

    def __init__(self, package):
        self.manifest = load_manifest(package)
        graph = self.manifest.graphs["decoder"]
        self.session = ort.InferenceSession(str(package / graph["file"]), providers=["CPUExecutionProvider"])
        kv = self.manifest.kv_cache
        self.rows = kv["layout"] == "SH"
        shape = (0, kv["num_kv_heads"] * kv["head_dim"]) if self.rows else (1, kv["num_kv_heads"], cache_rows(kv), kv["head_dim"])
        self.past = {name: np.zeros(shape, np.float32) for name in graph["inputs"] if name.startswith("past_key_values.")}
        self.inputs = set(graph["inputs"])
        self.total = 0

    def __call__(self, ids: list[int], rows: int = 1) -> np.ndarray:
        self.total += len(ids)
        feeds = {
            "input_ids": np.array([ids], np.int64),
            "seqlens_k": np.array([self.total - 1], np.int32),
            "total_sequence_length": np.array(self.total, np.int32),
            **self.past,
        }
        if "logits_start" in self.inputs:  # all_logits packages return every row and take no start
            feeds["logits_start"] = np.array([-rows], np.int64)
        logits, *present = self.session.run(None, feeds)
        if self.rows:
            present = [np.concatenate([past, new]) for past, new in zip(self.past.values(), present)]
        self.past = dict(zip(self.past, present))
        return logits[0]


def assert_parity(hf_dir, package, steps: int = 20, tolerance: float = 1e-3):
    ref = reference_model(hf_dir)
    decoder = OrtDecoder(package)
    prompt = list(np.random.default_rng(1).integers(0, 256, size=12))
    logits = decoder(prompt)
    expected = reference_logits(ref, prompt)
    assert np.abs(logits - expected).max() <= tolerance  # every prompt position
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(np.argmax(logits[-1])))
        logits = decoder([seq[-1]])
        assert np.abs(logits[-1] - reference_logits(ref, seq)[-1]).max() <= tolerance


@pytest.mark.parametrize("attention", ["gqa", "grouped"])
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_fp32_export_matches_transformers(family, attention, qwen2_dir, llama_dir, tmp_path):
    hf_dir = qwen2_dir if family == "qwen2" else llama_dir
    package = export_tiny(hf_dir, tmp_path / "pkg", precision="fp32", all_logits=True, attention=attention)
    assert load_manifest(package).kv_cache["layout"] == ("SH" if attention == "grouped" else "BNSH")
    assert_parity(hf_dir, package)


def quantized_reference(hf_dir, block_size: int, symmetric: bool, lm_head_bits: int = 8, eight_bit: tuple[str, ...] = ()):
    """transformers' model with every quantized tensor replaced by what its quantized form stands for: 4 bits, or 8
    for lm_head (LM_HEAD_BITS) and the weights whose names end with one of EIGHT_BIT."""
    import torch

    from edgeinfer.export.quantize import dequantize_blocks, quantize_blocks

    ref = reference_model(hf_dir)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if param.dim() == 2:
                head = name == "lm_head.weight" or (name == "model.embed_tokens.weight" and ref.config.tie_word_embeddings)
                q = quantize_blocks(param.numpy(), block_size, symmetric,
                                    lm_head_bits if head else 8 if name.endswith(eight_bit) else 4)
                param.copy_(torch.from_numpy(dequantize_blocks(q, param.shape[1])))
    return ref


@pytest.mark.parametrize("block_size,symmetric,lm_head_bits,rule", [(32, True, 4, "q4km"), (16, False, 4, "q4km"),
                                                                     (32, False, 8, "q4km"), (32, False, None, None)])
def test_w4a16_export_matches_its_dequantized_weights(qwen2_dir, tmp_path, block_size, symmetric, lm_head_bits, rule):
    """With fp32 compute (accuracy level 0) the only difference from transformers is the rounding itself. (q4km gives
    a 2-layer model no 8-bit layer; the default, attention-down, makes q|k|v, o and down 8-bit, lm_head 4-bit.)"""
    from edgeinfer.export.weight_bits import ATTENTION_AND_DOWN

    package = export_tiny(qwen2_dir, tmp_path / "pkg", precision="w4a16", all_logits=True, block_size=block_size,
                          symmetric=symmetric, accuracy_level=0, lm_head_bits=lm_head_bits, eight_bit_rule=rule,
                          activation_aware=False, embedding_block_size=block_size)  # onnxruntime's own rounding
    eight_bit = () if rule == "q4km" else ATTENTION_AND_DOWN
    ref = quantized_reference(qwen2_dir, block_size, symmetric, 4 if lm_head_bits is None else lm_head_bits, eight_bit)
    ids = list(np.random.default_rng(2).integers(0, 256, size=32))
    assert np.abs(OrtDecoder(package)(ids) - reference_logits(ref, ids)).max() <= 1e-3


def test_tied_embedding_gathers_the_lm_head_blocks(tmp_path):
    """A tied table is stored once: the embedding gathers the 8-bit lm_head's blocks (no 4-bit table of its own),
    and the graph equals transformers on those 8-bit weights."""
    import onnx

    from .conftest import make_hf_checkpoint

    tied = make_hf_checkpoint(tmp_path / "tied", tie_word_embeddings=True)
    package = export_tiny(tied, tmp_path / "pkg", precision="w4a16", all_logits=True, block_size=32, accuracy_level=0,
                          activation_aware=False)
    graph = onnx.load(str(package / "model.onnx"), load_external_data=False).graph
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.name == "lm_head")
    assert gather.input[0] == head.input[1] == "lm_head.qweight"
    assert not any(t.name == "embed.qweight" for t in graph.initializer)
    ids = list(np.random.default_rng(4).integers(0, 256, size=32))
    from edgeinfer.export.weight_bits import ATTENTION_AND_DOWN

    ref = quantized_reference(tied, 32, False, lm_head_bits=8, eight_bit=ATTENTION_AND_DOWN)  # the default rule
    assert np.abs(OrtDecoder(package)(ids) - reference_logits(ref, ids)).max() <= 1e-3


def test_w4a16_int8_compute_keeps_top1(qwen2_dir, tmp_path):
    """accuracy level 4 (int8 activations inside MatMulNBits) moves logits a little, not the argmax."""
    package = export_tiny(qwen2_dir, tmp_path / "pkg", precision="w4a16", all_logits=True, accuracy_level=4, block_size=32,
                          activation_aware=False, eight_bit_rule="q4km")
    ref = quantized_reference(qwen2_dir, 32, False)  # asymmetric, 4-bit layers (q4km in 2 layers), 8-bit lm_head
    ids = list(np.random.default_rng(3).integers(0, 256, size=64))
    ours, theirs = OrtDecoder(package)(ids), reference_logits(ref, ids)
    assert np.mean(ours.argmax(-1) == theirs.argmax(-1)) >= 0.9


def package_weights_reference(hf_dir, package):
    """transformers' model with every matmul and the embedding table replaced by what the package stores for them."""
    import onnx
    import torch

    from edgeinfer.export.quantize import QuantizedBlocks, dequantize_blocks

    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(package / "model.onnx")).graph.initializer}
    nodes = {n.name: n for n in onnx.load(str(package / "model.onnx"), load_external_data=False).graph.node}

    def stored(prefix, node_name, bits=4):
        node = nodes[node_name]
        block = next(a.i for a in node.attribute if a.name == "block_size")
        packed = init[f"{prefix}.qweight"]
        rows = packed.shape[0]
        blocks = init[f"{prefix}.scales"].size // rows
        zeros = init.get(f"{prefix}.qzeros")
        q = QuantizedBlocks(packed.reshape(rows, blocks, -1), init[f"{prefix}.scales"].reshape(rows, blocks),
                            None if zeros is None else zeros.reshape(rows, -1), block, bits)
        return torch.from_numpy(dequantize_blocks(q))

    ref = reference_model(hf_dir)
    config = ref.config
    head = config.hidden_size // config.num_attention_heads
    q_size, kv_size = config.num_attention_heads * head, config.num_key_value_heads * head
    with torch.no_grad():
        ref.model.embed_tokens.weight.copy_(stored("embed", "embed"))
        for i, layer in enumerate(ref.model.layers):
            p = f"model.layers.{i}."
            qkv = stored(p + "qkv_proj", p + "qkv_proj")
            for proj, rows in zip((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                                  qkv.split([q_size, kv_size, kv_size])):
                proj.weight.copy_(rows)
            layer.self_attn.o_proj.weight.copy_(stored(p + "o_proj", p + "o_proj"))
            gate, up = stored(p + "gate_up_proj", p + "gate_up_proj").chunk(2)
            layer.mlp.gate_proj.weight.copy_(gate)
            layer.mlp.up_proj.weight.copy_(up)
            layer.mlp.down_proj.weight.copy_(stored(p + "down_proj", p + "down_proj"))
        bits = next(a.i for a in nodes["lm_head"].attribute if a.name == "bits")
        ref.lm_head.weight.copy_(stored("lm_head", "lm_head", bits))
    return ref


def test_activation_aware_export_computes_with_the_weights_it_stores(qwen2_dir, tmp_path):
    """The searched scales, zero points and GPTQ's levels are packed as MatMulNBits and GatherBlockQuantized read
    them: with fp32 compute the graph equals transformers on the package's own dequantized weights."""
    package = export_tiny(qwen2_dir, tmp_path / "pkg", precision="w4a16", all_logits=True, block_size=32,
                          accuracy_level=0, activation_aware=True, eight_bit_rule="q4km")  # 4-bit layers
    ids = list(np.random.default_rng(2).integers(0, 256, size=32))
    ref = package_weights_reference(qwen2_dir, package)
    assert np.abs(OrtDecoder(package)(ids) - reference_logits(ref, ids)).max() <= 1e-3
    rtn = quantized_reference(qwen2_dir, 32, False)  # and its weights are not onnxruntime's round to nearest
    assert np.abs(reference_logits(rtn, ids) - reference_logits(ref, ids)).max() > 1e-2


def test_last_position_logits_only_by_default(qwen2_dir, tmp_path):
    package = export_tiny(qwen2_dir, tmp_path / "pkg", precision="fp32")
    logits = OrtDecoder(package)([1, 2, 3, 4, 5])
    assert logits.shape == (1, 272)
    full = reference_logits(reference_model(qwen2_dir), [1, 2, 3, 4, 5])
    assert np.abs(logits[0] - full[-1]).max() <= 1e-3
    # logits_start -k: the last k rows, what a speculative verify run reads
    rows = OrtDecoder(package)([1, 2, 3, 4, 5], rows=3)
    assert rows.shape == (3, 272) and np.abs(rows - full[-3:]).max() <= 1e-3


@pytest.mark.parametrize("block_size,symmetric", [(32, True), (128, False), (16, False), (128, True)])
def test_w4a16_block_sizes_and_zero_points(qwen2_dir, tmp_path, block_size, symmetric):
    package = export_tiny(qwen2_dir, tmp_path / "pkg", precision="w4a16", block_size=block_size, symmetric=symmetric)
    manifest = load_manifest(package)
    assert manifest.export_options["block_size"] == block_size
    logits = OrtDecoder(package)([5, 6, 7])
    assert np.isfinite(logits).all()


def test_gguf_source_matches_hf_source(qwen2_dir, tmp_path):
    """A GGUF written from the same weights exports to the same logits as the HF folder (float32 GGUF)."""
    from .gguf_fixtures import write_gguf_from_hf

    gguf_path = write_gguf_from_hf(qwen2_dir, tmp_path / "tiny.gguf")
    from_gguf = export_tiny(gguf_path, tmp_path / "from-gguf", precision="fp32", all_logits=True)
    assert_parity(qwen2_dir, from_gguf, steps=5)
    assert load_manifest(from_gguf).tokenizer["eos_token_ids"]


def test_llama_gguf_unpermutes_rotary_halves(llama_dir, tmp_path):
    from .gguf_fixtures import write_gguf_from_hf

    gguf_path = write_gguf_from_hf(llama_dir, tmp_path / "tiny-llama.gguf")
    package = export_tiny(gguf_path, tmp_path / "pkg", precision="fp32", all_logits=True)
    assert_parity(llama_dir, package, steps=3)


def test_mixed_bits_follow_q4_k_m_and_the_gguf():
    from types import SimpleNamespace

    from edgeinfer.export.weight_bits import more_bits_layer, weight_bits
    from edgeinfer.export.options import ExportOptions

    assert [i for i in range(28) if more_bits_layer(i, 28)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 25, 26, 27]
    hf = SimpleNamespace(spec=SimpleNamespace(num_layers=28), stored_bits=lambda name: None)
    down = lambda i: [f"model.layers.{i}.mlp.down_proj.weight"]  # noqa: E731
    assert weight_bits(hf, down(5), ExportOptions()) == 8 and weight_bits(hf, down(6), ExportOptions()) == 4
    assert weight_bits(hf, ["model.layers.5.self_attn.q_proj.weight"], ExportOptions()) == 4
    assert weight_bits(hf, down(5), ExportOptions(mixed_bits=False)) == 4
    gguf = SimpleNamespace(spec=hf.spec, stored_bits=lambda name: 6 if "v_proj" in name else 4)
    qkv = [f"model.layers.6.self_attn.{p}_proj.weight" for p in "qkv"]
    assert weight_bits(gguf, qkv, ExportOptions()) == 8 and weight_bits(gguf, down(5), ExportOptions()) == 4
    # The exporter's wrappers must not hide how a GGUF stored its tensors (they once did: every GGUF fell back to
    # the Q4_K_M rule).
    from edgeinfer.export.rotation import RotatedResidual
    from edgeinfer.export.sources import FiniteWeights

    from edgeinfer.architecture import ArchSpec

    gguf.description, gguf.random_weights = "gguf", False
    gguf.spec = ArchSpec(family="qwen2", hidden_size=64, num_layers=28, num_heads=4, num_kv_heads=2, head_dim=16,
                         intermediate_size=128, vocab_size=272, rope_theta=1e4, rms_norm_eps=1e-6,
                         max_position_embeddings=512)
    for wrapped in (FiniteWeights(gguf), RotatedResidual(FiniteWeights(gguf))):
        assert weight_bits(wrapped, qkv, ExportOptions()) == 8 and weight_bits(wrapped, down(5), ExportOptions()) == 4


def test_attention_down_rule_keeps_8_bits_for_all_but_gate_up(qwen2_dir, tmp_path):
    """--eight-bit attention-down: q|k|v, o and down_proj at 8 bits in every layer of a float source, gate|up at 4,
    lm_head as --lm-head-bits says (in the graph the exporter writes)."""
    import onnx

    from types import SimpleNamespace

    from edgeinfer.errors import ExportError
    from edgeinfer.export.options import ExportOptions
    from edgeinfer.export.weight_bits import weight_bits

    hf = SimpleNamespace(spec=SimpleNamespace(num_layers=28), stored_bits=lambda name: None)
    rule = ExportOptions(eight_bit_rule="attention-down")
    for i in (3, 6):  # layers outside Q4_K_M's rule too
        for proj, bits in (("self_attn.q_proj", 8), ("self_attn.o_proj", 8), ("mlp.down_proj", 8), ("mlp.gate_proj", 4)):
            assert weight_bits(hf, [f"model.layers.{i}.{proj}.weight"], rule) == bits
    assert weight_bits(hf, ["model.layers.6.mlp.down_proj.weight"], ExportOptions(eight_bit_rule="attention-down", mixed_bits=False)) == 4
    with pytest.raises(ExportError, match="8-bit rule"):
        ExportOptions(eight_bit_rule="all")
    assert ExportOptions().for_model(4096).eight_bit_rule == "attention-down"
    assert ExportOptions(target="qnn").for_model(4096).eight_bit_rule == "q4km"
    assert ExportOptions(target="cuda").for_model(4096).eight_bit_rule == "q4km"
    from edgeinfer.export.weight_bits import head_bits

    def source(tied: bool, stored):
        return SimpleNamespace(spec=SimpleNamespace(num_layers=28, tie_word_embeddings=tied), stored_bits=lambda name: stored)

    cpu = ExportOptions().for_model(4096)
    assert head_bits(source(False, None), cpu) == 4  # its bytes pay for the 8-bit attention
    assert head_bits(source(True, None), cpu) == 8  # a tied table is shared with the embedding at 8 bits
    assert head_bits(source(False, 6), cpu) == 8  # a GGUF's own choice (--requantize)
    assert head_bits(source(False, None), ExportOptions(target="qnn").for_model(4096)) == 8
    assert head_bits(source(False, None), ExportOptions(lm_head_bits=0).for_model(4096)) == 0
    package = export_tiny(qwen2_dir, tmp_path / "pkg", eight_bit_rule="attention-down", lm_head_bits=4)
    graph = onnx.load(package / "model.onnx", load_external_data=False).graph
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"}
    for layer in range(2):
        p = f"model.layers.{layer}."
        assert (bits[p + "qkv_proj"], bits[p + "o_proj"], bits[p + "down_proj"], bits[p + "gate_up_proj"]) == (8, 8, 8, 4)
    assert bits["lm_head"] == 4


def test_lm_head_bits_0_keeps_lm_head_float(qwen2_dir, tmp_path):
    """--lm-head-bits 0 means a float lm_head (it once fell through to the 4-bit rule)."""
    import onnx

    package = export_tiny(qwen2_dir, tmp_path / "pkg", lm_head_bits=0)
    graph = onnx.load(package / "model.onnx", load_external_data=False).graph
    assert next(n for n in graph.node if n.name == "lm_head").op_type == "MatMul"
