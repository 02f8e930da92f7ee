"""Build an ONNX graph whose weights stream straight to one external-data file.

Each initializer is written to disk as soon as it is made and only its location is kept in the proto,
so exporting never holds more than the tensor at hand in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Page-aligned offsets let onnxruntime memory-map weights instead of copying them.
_ALIGN = 4096
_INLINE_LIMIT = 1024  # tiny constants stay inside model.onnx


class GraphWriter:
    def __init__(self, data_path: Path, opset: int = 21):
        self.data_path = data_path
        self._data = open(data_path, "wb")
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()

    def initializer(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes <= _INLINE_LIMIT:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        offset = -self._data.tell() % _ALIGN
        self._data.write(b"\0" * offset)
        start = self._data.tell()
        self._data.write(array.tobytes())
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(start)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        return name

    def constant(self, name: str, values, dtype=np.int64) -> str:
        return self.initializer(name, np.asarray(values, dtype=dtype))

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, name: str = "", domain: str = "", **attrs) -> list[str]:
        """Add a node; `outputs` as a count makes unique names from the node name."""
        name = self._unique(name or op)
        if isinstance(outputs, int):
            outputs = [f"{name}/out{i}" if outputs > 1 else f"{name}/out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def _unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._names:
            candidate, i = f"{name}_{i}", i + 1
        self._names.add(candidate)
        return candidate

    def save(self, model_path: Path, producer: str, metadata: dict[str, str] | None = None) -> None:
        self._data.close()
        graph = helper.make_graph(self.nodes, "edgeinfer", self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer, ir_version=10)
        for key, value in (metadata or {}).items():
            model.metadata_props.add(key=key, value=value)
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())

    def close(self) -> None:
        if not self._data.closed:
            self._data.close()
