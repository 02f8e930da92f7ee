"""uint16 KV-cache I/O for the QDQ static graphs: the host keeps the cache in the graphs' quantized type.

After quantize_static every cache tensor crosses the graph boundary as float32: past_<slot> -> QuantizeLinear ->
DequantizeLinear, and ... -> QuantizeLinear -> DequantizeLinear -> new_<slot>. For the 1.5B shape that is 235 MB of
float32 cache per decode step, which the NPU then quantizes to uint16 itself. Here each past input becomes uint16 and
is read by its DequantizeLinear directly, and each new output becomes the QuantizeLinear's uint16 output (the
DequantizeLinear stays, feeding the graph's own consumers). The host copies the new rows into its cache as they come:
calibration gives past_<slot> and new_<slot> of both roles one range (calibration.tie_ranges, called by qdq), so
one scale and zero point holds for the slot, recorded in the manifest (graphs.host.kv_cache).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import ExportError
from ..graph_contract import CACHE_KINDS, cache_slot, cache_slot_of

CACHE_DTYPE = TensorProto.UINT16
Encoding = tuple[float, int]  # scale, zero point


class _Graph:
    """Producer/consumer indexes of one graph, kept up to date by the renames below."""

    def __init__(self, model: onnx.ModelProto, path: Path):
        self.model, self.path = model, path
        self.initializers = {i.name: i for i in model.graph.initializer}

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.model.graph.node if name in n.input]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.model.graph.node if name in n.output), None)

    def rename_reads(self, old: str, new: str) -> None:
        for node in self.consumers(old):
            node.input[:] = [new if x == old else x for x in node.input]

    def encoding(self, node: onnx.NodeProto) -> Encoding:
        """A per-tensor uint16 Q/DQ node's scale and zero point."""
        if len(node.input) < 3 or node.input[1] not in self.initializers or node.input[2] not in self.initializers:
            raise ExportError(f"{self.path.name}: {node.name} has no constant scale and zero point: the quantizer's "
                              "output changed shape, update export/quantized_io.py")
        scale = numpy_helper.to_array(self.initializers[node.input[1]])
        zero = self.initializers[node.input[2]]
        if scale.size != 1 or zero.data_type != CACHE_DTYPE:
            raise ExportError(f"{self.path.name}: {node.name} is not per-tensor uint16: cache I/O needs the QNN config's "
                              "uint16 activations (qdq.quantize_config)")
        return float(scale.reshape(-1)[0]), int(numpy_helper.to_array(zero).reshape(-1)[0])

    def set_type(self, values, name: str) -> None:
        next(v for v in values if v.name == name).type.tensor_type.elem_type = CACHE_DTYPE


def quantize_input(graph: _Graph, name: str) -> Encoding:
    """past_<slot>: drop the QuantizeLinear that reads the float input; its readers (DequantizeLinear) read the input."""
    readers = graph.consumers(name)
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        raise ExportError(f"{graph.path.name}: {name} is read by {[n.op_type for n in readers]}, not one QuantizeLinear: "
                          "quantize the graph before giving it uint16 cache I/O")
    quantize = readers[0]
    encoding = graph.encoding(quantize)
    dequantizers = graph.consumers(quantize.output[0])
    for node in dequantizers:
        if node.op_type != "DequantizeLinear" or graph.encoding(node) != encoding:
            raise ExportError(f"{graph.path.name}: {name}'s QuantizeLinear feeds {node.op_type} {node.name}, not a "
                              "DequantizeLinear of the same scale: update export/quantized_io.py")
    graph.rename_reads(quantize.output[0], name)
    graph.model.graph.node.remove(quantize)
    graph.set_type(graph.model.graph.input, name)
    return encoding


def quantize_output(graph: _Graph, name: str) -> Encoding:
    """new_<slot>: the graph output becomes the uint16 QuantizeLinear output that fed its final DequantizeLinear,
    whose float output (renamed) still feeds the graph's own readers."""
    dequantize = graph.producer(name)
    quantize = graph.producer(dequantize.input[0]) if dequantize is not None and dequantize.op_type == "DequantizeLinear" else None
    if quantize is None or quantize.op_type != "QuantizeLinear":
        raise ExportError(f"{graph.path.name}: {name} is not written by QuantizeLinear -> DequantizeLinear: quantize the "
                          "graph before giving it uint16 cache I/O")
    encoding = graph.encoding(quantize)
    if graph.encoding(dequantize) != encoding:
        raise ExportError(f"{graph.path.name}: {name}'s QuantizeLinear and DequantizeLinear disagree on the scale: "
                          "update export/quantized_io.py")
    floating = f"{name}_DequantizeLinear_Output"
    if graph.producer(floating) is not None:
        raise ExportError(f"{graph.path.name}: {floating} already exists: update export/quantized_io.py")
    graph.rename_reads(name, floating)
    dequantize.output[0] = floating
    graph.rename_reads(quantize.output[0], name)
    quantize.output[0] = name
    graph.set_type(graph.model.graph.output, name)
    return encoding


def quantize_cache_io(path: Path) -> dict[str, Encoding]:
    """Rewrite PATH's cache inputs and outputs to uint16 (in place; its external weights are not touched); returns
    each cache tensor's encoding by I/O name."""
    model = onnx.load(str(path), load_external_data=False)
    graph = _Graph(model, path)
    encodings = {}
    for value in model.graph.input:
        if cache_slot_of(value.name):
            encodings[value.name] = quantize_input(graph, value.name)
    for value in model.graph.output:
        if cache_slot_of(value.name):
            encodings[value.name] = quantize_output(graph, value.name)
    stale = {v.name for v in model.graph.value_info} & set(encodings)
    for info in [v for v in model.graph.value_info if v.name in stale]:
        model.graph.value_info.remove(info)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)  # types agree end to end (a path: external data not loaded)
    return encodings


def uint16_cache_io(folder: Path, graphs: dict, num_layers: int) -> dict:
    """Give every graph of GRAPHS (in FOLDER) uint16 cache I/O; returns graphs.host.kv_cache: one scale and zero point
    per cache slot, the same in past and new of both roles (else the host would have to requantize)."""
    slots: dict[str, Encoding] = {}
    for role in ("prefill", "decode"):
        for part in graphs[role]["parts"]:
            for name, encoding in quantize_cache_io(folder / part["file"]).items():
                slot = cache_slot_of(name)
                if slots.setdefault(slot, encoding) != encoding:
                    raise ExportError(f"{part['file']}: {name} is encoded {encoding}, elsewhere {slots[slot]}: the cache "
                                      "ranges were not tied (calibration.tie_ranges in qdq.quantize_graphs)")
    expected = [cache_slot(i, kind) for i in range(num_layers) for kind in CACHE_KINDS]
    if sorted(slots) != sorted(expected):
        raise ExportError(f"the graphs encode cache slots {sorted(slots)[:4]}..., the model has {expected[:4]}...: "
                          "re-export the package")
    return {
        "dtype": np.dtype(np.uint16).name,
        "scale": {slot: slots[slot][0] for slot in expected},
        "zero_point": {slot: slots[slot][1] for slot in expected},
    }
