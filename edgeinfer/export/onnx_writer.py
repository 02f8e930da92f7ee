"""Build an ONNX graph whose weights stream straight to one external-data file.

Each initializer is written to disk as soon as it is made and only its location is kept in the proto,
so exporting never holds more than the tensor at hand in memory. Graphs that hold the same weights (a static
package's prefill and decode) can write into one WeightsFile: a weight is made and written once, and each graph
refers to the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Page-aligned offsets let onnxruntime memory-map weights instead of copying them.
_ALIGN = 4096
_INLINE_LIMIT = 1024  # tiny constants stay inside model.onnx


class WeightsFile:
    """One external-data file and the tensors written to it, by name."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")
        self.written: dict[str, TensorProto] = {}

    def write(self, name: str, array: np.ndarray) -> TensorProto:
        """ARRAY appended at a page-aligned offset; returns the initializer that points at it."""
        array = np.ascontiguousarray(array)
        return self.write_bytes(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array.tobytes())

    def write_bytes(self, name: str, data_type: int, dims, payload: bytes) -> TensorProto:
        """PAYLOAD (the tensor's raw bytes, e.g. packed INT4) appended as initializer NAME of DATA_TYPE and DIMS."""
        offset = -self._file.tell() % _ALIGN
        self._file.write(b"\0" * offset)
        start = self._file.tell()
        self._file.write(payload)
        tensor = TensorProto(name=name, data_type=data_type, dims=list(dims))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(start)), ("length", str(len(payload)))):
            tensor.external_data.add(key=key, value=value)
        self.written[name] = tensor
        return tensor

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class GraphWriter:
    def __init__(self, data: Path | WeightsFile, opset: int = 21):
        self.weights = data if isinstance(data, WeightsFile) else WeightsFile(data)
        self.data_path = self.weights.path
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
        self.initializers.append(self.weights.write(name, array))
        return name

    def shared_initializer(self, name: str, make) -> str:
        """The initializer NAME from the weights file if a graph already wrote it there, else MAKE()'s array
        written now (MAKE runs only then: reading and transforming a weight is the export's main cost)."""
        tensor = self.weights.written.get(name)
        if tensor is None:
            return self.initializer(name, make())
        copy = TensorProto()
        copy.CopyFrom(tensor)
        self.initializers.append(copy)
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
        """Write the graph to MODEL_PATH (its weights file is closed by whoever owns it: see close)."""
        graph = helper.make_graph(self.nodes, "edgeinfer", self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer, ir_version=10)
        for key, value in (metadata or {}).items():
            model.metadata_props.add(key=key, value=value)
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())

    def close(self) -> None:
        self.weights.close()
