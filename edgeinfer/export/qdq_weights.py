"""The weights of a W4A16 QDQ graph: each MatMul weight encoded once, then written as the DequantizeLinear input of
its MatMul before onnxruntime's quantizer runs.

The quantizer leaves a weight that already comes out of a DequantizeLinear alone ("pre-quantized weights"), so it
only places the activations' Q/DQ pairs. Encoding the weights here, once per part for prefill and decode together,
replaced its per-channel int4 pass (a Python loop per output channel: 152k of them for lm_head) and the block
re-encoding that followed it; the 1.5B export spent most of its quantization time there.

Encodings (zero point 0, given explicitly: the form the HTP and the CPU EP read alike):
- int4, symmetric, blocks of --block-size input rows on the LPBQ grid (int4_blocks.py), rounded by GPTQ where the
  calibration gathered the weight's inputs (gptq.py), to nearest otherwise;
- int4 per output channel where the input dimension does not split into blocks;
- int8 per output channel for lm_head (it decides the token) and the weights weight_bits.py keeps at 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from .gptq import InverseHessian, LinearInputs, gptq_int4_blocks
from .int4_blocks import INT4_MAX, block_size_for, int4_blocks
from .onnx_writer import WeightsFile

HEAD_WEIGHT = "lm_head.weight"
INT8_MAX = 127


@dataclass(frozen=True)
class Encoding:
    """How one weight was written: the DequantizeLinear attributes and what chose its rounding."""

    bits: int
    axis: int
    block_size: int | None
    rounding: str  # "gptq" or "nearest"

    def attributes(self) -> dict[str, int]:
        return {"axis": self.axis, **({"block_size": self.block_size} if self.block_size else {})}


def weight_matmuls(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(input tensor, weight initializer) of every MatMul that multiplies by a weight, in graph order."""
    initializers = {i.name for i in model.graph.initializer}
    return [(n.input[0], n.input[1]) for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in initializers]


def gptq_inputs(float_path: Path, eight_bit: set[str]) -> set[str]:
    """The input tensors of FLOAT_PATH's int4 matmuls: what the calibration gathers for GPTQ."""
    model = onnx.load(str(float_path), load_external_data=False)
    return {x for x, w in weight_matmuls(model) if not _keeps_eight_bits(w, eight_bit)}


def _keeps_eight_bits(name: str, eight_bit: set[str]) -> bool:
    return name == HEAD_WEIGHT or name in eight_bit


def encode_weights(float_path: Path, eight_bit: set[str], block: int, inputs: LinearInputs | None,
                   weights: WeightsFile) -> dict[str, Encoding]:
    """Encode every MatMul weight of FLOAT_PATH into WEIGHTS as <name>_quantized / _scale / _zero_point (the names
    onnxruntime's quantizer gives its own); weights whose input INPUTS gathered are rounded by GPTQ."""
    model = onnx.load(str(float_path), load_external_data=False)
    initializers = {i.name: i for i in model.graph.initializer}
    encodings = {}
    matmuls = sorted(weight_matmuls(model), key=lambda pair: pair[0])  # groupby: each input's weights together
    for tensor, pairs in groupby(matmuls, key=lambda pair: pair[0]):
        names = [w for _, w in pairs]
        inverse = None
        if inputs is not None and tensor in inputs.tensors and any(not _keeps_eight_bits(w, eight_bit) for w in names):
            inverse = InverseHessian.of(inputs.hessian(tensor))  # one factorization serves q/k/v or gate/up
        for name in names:
            weight = numpy_helper.to_array(initializers[name], base_dir=str(float_path.parent))  # [K, N]
            encodings[name] = _encode(name, weight, eight_bit, block, inverse, weights)
    return encodings


def _encode(name: str, weight: np.ndarray, eight_bit: set[str], block: int, inverse: InverseHessian | None,
            weights: WeightsFile) -> Encoding:
    if _keeps_eight_bits(name, eight_bit):
        scale = _channel_scale(weight, INT8_MAX)
        q = np.clip(np.rint(weight / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
        _write(weights, name, q, scale, TensorProto.INT8)
        return Encoding(8, 1, None, "nearest")
    size = block_size_for(weight.shape[0], block)
    if size is None:
        scale = _channel_scale(weight, INT4_MAX)
        q = np.clip(np.rint(weight / scale), -INT4_MAX, INT4_MAX).astype(np.int8)
        _write(weights, name, q, scale, TensorProto.INT4)
        return Encoding(4, 1, None, "nearest")
    q, scales = gptq_int4_blocks(weight, inverse, size) if inverse is not None else int4_blocks(weight, size)
    _write(weights, name, q, scales, TensorProto.INT4)
    return Encoding(4, 0, size, "gptq" if inverse is not None else "nearest")


def _channel_scale(weight: np.ndarray, top: int) -> np.ndarray:
    scale = (np.abs(weight).max(axis=0) / top).astype(np.float32)
    scale[scale == 0] = 1.0
    return scale


def _write(weights: WeightsFile, name: str, q: np.ndarray, scale: np.ndarray, data_type: int) -> None:
    weights.write_bytes(f"{name}_quantized", data_type, q.shape, _payload(q, data_type))
    zero = np.zeros(scale.shape, dtype=np.int8)
    weights.write_bytes(f"{name}_zero_point", data_type, zero.shape, _payload(zero, data_type))
    weights.write(f"{name}_scale", scale.astype(np.float32))


def _payload(values: np.ndarray, data_type: int) -> bytes:
    """VALUES (int8) as the raw bytes of DATA_TYPE: INT4 packs two per byte, low nibble first."""
    if data_type == TensorProto.INT8:
        return values.astype(np.int8).tobytes()
    flat = values.astype(np.int8).reshape(-1).view(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def prequantized_graph(float_path: Path, out_path: Path, encodings: dict[str, Encoding], weights: WeightsFile) -> None:
    """FLOAT_PATH with each encoded MatMul weight replaced by DequantizeLinear(<name>_quantized, _scale, _zero_point)
    from WEIGHTS, written to OUT_PATH; its other external initializers are copied into WEIGHTS once per distinct
    source bytes (prefill and decode of a part share them)."""
    model = onnx.load(str(float_path), load_external_data=False)
    graph = model.graph
    nodes = []
    for node in graph.node:
        name = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if name in encodings:
            output = f"{name}_DequantizeLinear_Output"
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
                                          [output], name=f"{name}_DequantizeLinear", **encodings[name].attributes()))
            node.input[1] = output
        nodes.append(node)
    kept = []
    for tensor in graph.initializer:
        if tensor.name in encodings:
            kept += [_reference(weights.written[f"{tensor.name}{suffix}"]) for suffix in ("_quantized", "_scale", "_zero_point")]
        elif external_data_helper.uses_external_data(tensor):
            kept.append(_copied(tensor, float_path.parent, weights))
        else:
            kept.append(tensor)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    with open(out_path, "wb") as f:
        f.write(model.SerializeToString())


def _reference(tensor: TensorProto) -> TensorProto:
    copy = TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _copied(tensor: TensorProto, base: Path, weights: WeightsFile) -> TensorProto:
    """TENSOR's external bytes copied into WEIGHTS (keyed by where they came from, so two graphs that point at the
    same bytes share the copy)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    key = f"{info['location']}@{info.get('offset', '0')}+{info.get('length', '')}"
    if key not in weights.written:
        array = numpy_helper.to_array(tensor, base_dir=str(base))
        weights.write(key, array)
    copy = _reference(weights.written[key])
    copy.name = tensor.name
    return copy
