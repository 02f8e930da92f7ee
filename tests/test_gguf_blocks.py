"""Lossless GGUF import: each block format's exact MatMulNBits form against gguf-py's own dequantize, and packages
that keep a GGUF's blocks against a float package of the same file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeinfer.export.gguf_blocks import EXACT_KINDS, exact_blocks
from edgeinfer.export.gguf_source import GGUFSource

from .conftest import decode_and_verify_rows, export_tiny, make_hf_checkpoint
from .gguf_fixtures import quantized_raw, write_gguf_from_hf

# Formats with mins add (code shift) * scale - min per block: one float32 rounding more than gguf-py's d*q - m.
WITH_MINS = ("Q4_1", "Q4_K", "Q5_K")
Q4_K_M = {"attn_q.weight": "Q4_K", "attn_k.weight": "Q4_K", "attn_v.weight": "Q6_K", "attn_output.weight": "Q4_K",
          "ffn_gate.weight": "Q4_K", "ffn_up.weight": "Q4_K", "ffn_down.weight": "Q6_K", "token_embd.weight": "Q4_K",
          "output.weight": "Q6_K"}
MIXED = {"attn_q.weight": "Q4_0", "attn_k.weight": "Q4_1", "attn_v.weight": "Q8_0", "attn_output.weight": "Q5_K",
         "ffn_gate.weight": "Q4_1", "ffn_up.weight": "Q4_1", "ffn_down.weight": "Q4_0", "token_embd.weight": "Q8_0",
         "output.weight": "Q4_0"}


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_blocks_are_gguf_dequantize(kind, tmp_path):
    import gguf

    weight = np.random.default_rng(1).standard_normal((6, 512)).astype(np.float32)
    writer = gguf.GGUFWriter(str(tmp_path / "w.gguf"), "llama")
    writer.add_tensor("w", quantized_raw(weight, kind), raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensor = gguf.GGUFReader(tmp_path / "w.gguf").tensors[0]
    expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(6, 512)

    blocks = exact_blocks(tensor.data, kind, (6, 512))
    ours = blocks.dequantize()
    assert blocks.bits in (4, 8) and blocks.block_size in (16, 32)
    assert blocks.codes.max() < 2**blocks.bits
    if kind in WITH_MINS:
        assert np.all(np.abs(ours - expected) <= np.spacing(np.abs(expected).max()))
    else:
        np.testing.assert_array_equal(ours, expected)
    # The packed form MatMulNBits reads holds the same codes, two 4-bit codes a byte, low nibble first.
    packed = blocks.packed()
    if blocks.bits == 4:
        unpacked = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(6, 512)
    else:
        unpacked = packed.reshape(6, 512)
    np.testing.assert_array_equal(unpacked, blocks.codes)
    # Rows move with their scales (the rope un-permutation and Phi-3's fused rows take rows).
    order = np.array([3, 0, 5])
    np.testing.assert_array_equal(blocks.rows(order).dequantize(), ours[order])


def test_types_without_an_exact_form_are_left_to_requantizing():
    assert exact_blocks(np.zeros(84 * 2, np.uint8), "Q2_K", (2, 256)) is None
    assert exact_blocks(np.zeros(18 * 3, np.uint8), "Q4_0", (2, 48)) is None  # 48 inputs: not whole blocks of 32


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    # Inputs of 256 and 512: whole K-quant superblocks.
    return make_hf_checkpoint(tmp_path_factory.mktemp("wide") / "hf", "qwen2", hidden_size=256, intermediate_size=512)


def _logits(package, ids):
    import edgeinfer

    return edgeinfer.load(package, verify=False).engine.new_runner().forward(np.asarray(ids), 0, all_rows=True)


def _matmul_blocks(package) -> set[int]:
    model = onnx.load(str(package / "model.onnx"), load_external_data=False)
    return {next(a.i for a in n.attribute if a.name == "block_size") for n in model.graph.node if n.op_type == "MatMulNBits"}


# Q4_K_M as llama.cpp writes it for Qwen2.5 (a Q4_K embedding, Q6_K output), and every other exact type somewhere,
# the embedding as Q6_K (8-bit blocks of 16 in GatherBlockQuantized).
MIXED_K = {**Q4_K_M, "ffn_gate.weight": "Q5_K", "ffn_up.weight": "Q5_K", "token_embd.weight": "Q6_K", "output.weight": "Q4_K"}


@pytest.mark.parametrize("types", [Q4_K_M, MIXED, MIXED_K], ids=["q4_k_m", "mixed", "mixed_k"])
def test_lossless_package_computes_the_gguf_weights(types, wide_checkpoint, tmp_path):
    gguf_path = write_gguf_from_hf(wide_checkpoint, tmp_path / "m.gguf", types)
    ids = list(range(3, 40))
    reference = _logits(export_tiny(gguf_path, tmp_path / "fp32", precision="fp32", all_logits=True), ids)
    scale = np.abs(reference).max()
    # accuracy_level 0: MatMulNBits in float32, so only summation order parts it from the float package.
    exact = export_tiny(gguf_path, tmp_path / "exact", accuracy_level=0, all_logits=True)
    assert np.abs(_logits(exact, ids) - reference).max() < 1e-4 * scale
    assert _matmul_blocks(exact) <= {16, 32}  # the file's own blocks, none of the requantizer's 128
    requantized = export_tiny(gguf_path, tmp_path / "requantized", accuracy_level=0, all_logits=True, requantize=True)
    assert _matmul_blocks(requantized) == {128}
    assert np.abs(_logits(requantized, ids) - reference).max() > 1e-2 * scale


def test_lossless_packages_verify_exactly_and_requantized_ones_skip_the_padding(wide_checkpoint, tmp_path):
    """A Q4_K_M import keeps blocks of 16/32 (batch invariant), so decode's attention takes its padding row and a
    verify run's rows are the decode steps' logits to the bit; requantized blocks of 128 are not batch invariant, so
    their packages skip the padding (it would cost decode time for nothing), as --no-exact-speculation does."""
    import edgeinfer

    gguf_path = write_gguf_from_hf(wide_checkpoint, tmp_path / "m.gguf", Q4_K_M)
    exact = export_tiny(gguf_path, tmp_path / "exact")
    for folder, spare in ((exact, 1), (export_tiny(gguf_path, tmp_path / "requantized", requantize=True), 0),
                          (export_tiny(gguf_path, tmp_path / "off", exact_speculation=False), 0)):
        manifest = edgeinfer.load(folder).manifest
        assert manifest.kv_cache["spare_rows"] == spare and manifest.export_options["exact_speculation"] == bool(spare)
    rows, steps = decode_and_verify_rows(edgeinfer.load(exact), list(range(3, 40)), 5)
    assert np.array_equal(rows, steps)


def test_gguf_source_gives_blocks_for_quantized_tensors_only(wide_checkpoint, tmp_path):
    source = GGUFSource(write_gguf_from_hf(wide_checkpoint, tmp_path / "m.gguf", {"attn_v.weight": "Q6_K"}))
    v = source.exact_blocks("model.layers.0.self_attn.v_proj.weight")
    assert v.kind == "Q6_K" and v.shape == (source.spec.kv_size, source.spec.hidden_size)
    np.testing.assert_array_equal(v.dequantize(), source.tensor("model.layers.0.self_attn.v_proj.weight"))
    assert source.exact_blocks("model.layers.0.self_attn.q_proj.weight") is None  # F32 in this file


def test_llama_rows_are_unpermuted_with_their_blocks(llama_dir, tmp_path):
    """llama.cpp's converter interleaves q/k rows per head for Llama; the exact blocks must be un-permuted row-wise."""
    types = {name: "Q8_0" for name in MIXED}  # every matrix (an F32 one would be quantized to 4 bits)
    gguf_path = write_gguf_from_hf(llama_dir, tmp_path / "llama.gguf", types)
    ids = list(range(3, 30))
    reference = _logits(export_tiny(gguf_path, tmp_path / "fp32", precision="fp32", all_logits=True), ids)
    exact = _logits(export_tiny(gguf_path, tmp_path / "exact", accuracy_level=0, all_logits=True), ids)
    assert np.abs(exact - reference).max() < 1e-4 * np.abs(reference).max()


def test_cli_requantize_flag_keeps_the_old_path(wide_checkpoint, tmp_path):
    from edgeinfer.cli import main
    from edgeinfer.package import load_package

    gguf_path = write_gguf_from_hf(wide_checkpoint, tmp_path / "m.gguf", Q4_K_M)
    for flags, blocks in (([], {16, 32}), (["--requantize"], {128})):
        out = tmp_path / f"pkg{len(flags)}"
        assert main(["export", str(gguf_path), "-o", str(out), "--context", "64", *flags]) == 0
        assert load_package(out).manifest.export_options["requantize"] == bool(flags)
        assert _matmul_blocks(out) == blocks


def test_calibration_only_where_weights_are_quantized_from_floats(wide_checkpoint, tmp_path):
    """A lossless import keeps every matmul's blocks: activation-aware calibration (minutes on a 1.5B) is skipped;
    --requantize and a float GGUF quantize from floats, and a float GGUF leaves the choice of bits to the export."""
    from edgeinfer.export.dynamic_graph import quantizes_from_floats
    from edgeinfer.export.options import ExportOptions

    q4_k_m = GGUFSource(write_gguf_from_hf(wide_checkpoint, tmp_path / "q.gguf", Q4_K_M))
    floats = GGUFSource(write_gguf_from_hf(wide_checkpoint, tmp_path / "f.gguf"))
    assert not quantizes_from_floats(q4_k_m, ExportOptions())
    assert quantizes_from_floats(q4_k_m, ExportOptions(requantize=True))
    assert quantizes_from_floats(floats, ExportOptions())
    assert not quantizes_from_floats(floats, ExportOptions(precision="fp32"))
    assert floats.stored_bits("model.layers.0.mlp.down_proj.weight") is None  # F32: not "32 bits, so keep 8"
    assert q4_k_m.stored_bits("model.layers.0.self_attn.q_proj.weight") == 4
