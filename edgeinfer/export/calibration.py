"""Streaming MinMax calibration: activation ranges folded feed by feed, never a list of feeds or outputs.

onnxruntime's MinMaxCalibrater reads its feeds from a CalibrationDataReader, so the generation loop had to
record every feed first (and its periodic fold, CalibMaxIntermediateOutputs, drops the collected statistics in
onnxruntime 1.32 instead of folding them). For the 1.5B shape one feed holds the whole KV cache (28 layers x 2 x
[1,2,4096,128] fp32 = 235 MB): the recorded feeds alone came to ~10 GB, beside the float sessions and the
calibrator's own copy of the graph.

Here each float graph gets the calibrator's own augmentation (ReduceMin/ReduceMax of every float tensor that
an op to quantize reads or writes) saved beside it, pointing at the same weights file; the generation loop
runs these augmented graphs directly, and each run folds its minima and maxima into running ranges. The
ranges go to onnxruntime.quantization as its calibration cache (TensorsData JSON), so the quantizer itself
is unchanged and skips calibration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .gptq import LinearInputs

_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
_MIN, _MAX = "/calib_min", "/calib_max"


def tensors_to_calibrate(model: onnx.ModelProto, op_types: set[str]) -> list[str]:
    """What MinMaxCalibrater.select_tensors_to_calibrate picks: float inputs and outputs of OP_TYPES nodes that
    are not initializers (MODEL must carry inferred shapes)."""
    infos = {v.name: v for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    initializers = {i.name for i in model.graph.initializer}
    chosen = set()
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for name in (*node.input, *node.output):
            info = infos.get(name)
            if info is not None and name not in initializers and info.type.tensor_type.elem_type in _FLOAT_TYPES:
                chosen.add(name)
    return sorted(chosen)


def augment(float_path: Path, op_types: set[str], taps: set[str] = frozenset()) -> tuple[Path, list[str]]:
    """Write FLOAT_PATH with a scalar min and max output per calibrated tensor, and TAPS as whole outputs, next to
    it (sharing its external weights file); returns the new path and the calibrated tensor names."""
    inferred = float_path.with_name(f"{float_path.stem}.inferred.onnx")
    onnx.shape_inference.infer_shapes_path(str(float_path), str(inferred))  # reads shapes, not weights
    model = onnx.load(str(inferred), load_external_data=False)
    inferred.unlink()
    names = tensors_to_calibrate(model, op_types)
    chosen = set(names)
    flat = "calib/flat"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), flat))

    def reductions(tensors) -> list[onnx.NodeProto]:
        nodes = []
        for name in (t for t in tensors if t in chosen):
            for op, suffix in (("ReduceMin", _MIN), ("ReduceMax", _MAX)):
                nodes.append(helper.make_node(op, [name], [name + suffix + "/keep"], name=name + suffix, keepdims=1))
                nodes.append(helper.make_node("Reshape", [name + suffix + "/keep", flat], [name + suffix],
                                              name=name + suffix + "/flat"))
                model.graph.output.append(helper.make_tensor_value_info(name + suffix, TensorProto.FLOAT, [1]))
        return nodes

    # Each reduction right after its tensor's producer, run in this order (RangeSession asks for PRIORITY_BASED
    # order, which follows node order where the default does not): a reduction run late keeps its activation
    # alive, 3.5 GiB more for the 1.5B prefill.
    nodes = reductions(i.name for i in model.graph.input)
    for node in model.graph.node:
        nodes += [node, *reductions(node.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    infos = {v.name: v for v in model.graph.value_info}
    model.graph.output.extend(infos[name] for name in sorted(taps) if name in infos)  # TAPS may name other parts' tensors
    path = float_path.with_name(f"{float_path.stem}.calib.onnx")
    onnx.save(model, str(path))  # the initializers still name FLOAT_PATH's data file: no weight is copied
    return path, names


class SharedWeights:
    """Float graphs' external initializers as OrtValues over one read-only memory map per weight. The prefill and
    decode sessions of a part read the same data file; mapped by each session it counted twice in the export's RSS
    (16.9 GiB for the 1.5B against 10.8 GiB proportional); given these, both read one mapping."""

    def __init__(self):
        self.values: dict[tuple, ort.OrtValue] = {}
        self.arrays: list[np.ndarray] = []  # what the OrtValues point into

    def add_to(self, options: ort.SessionOptions, graph_path: Path) -> None:
        """Hand GRAPH_PATH's external initializers to OPTIONS, mapping each stored tensor once across graphs."""
        from onnx import external_data_helper, helper

        for tensor in onnx.load(str(graph_path), load_external_data=False).graph.initializer:
            if not external_data_helper.uses_external_data(tensor):
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            where = (info["location"], int(info.get("offset", 0)), tensor.data_type, tuple(tensor.dims))
            if where not in self.values:
                array = np.memmap(graph_path.parent / where[0], dtype=helper.tensor_dtype_to_np_dtype(tensor.data_type),
                                  mode="r", offset=where[1], shape=where[3])
                self.arrays.append(array)
                self.values[where] = ort.OrtValue.ortvalue_from_numpy(array)
            options.add_initializer(tensor.name, self.values[where])  # the session uses this memory; self keeps it


class RangeSession:
    """Runs an augmented graph like the float graph it came from (same `run(output_names, feed)`), folding
    each run's per-tensor minima and maxima into running ranges; `feeds` counts the runs. With INPUTS, the
    tapped tensors of each run go to it (the weight matmuls' inputs that GPTQ needs)."""

    def __init__(self, augmented_path: Path, names: list[str], inputs: LinearInputs | None = None,
                 weights: SharedWeights | None = None):
        so = ort.SessionOptions()
        self.weights = weights
        if weights is not None:
            weights.add_to(so, augmented_path)
        so.log_severity_level = 3
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # node order: each reduction next to its producer
        # Unpacked MatMuls read the weights from the memory-mapped (page-aligned) data file: for the 1.5B shape
        # ~6 GiB less anonymous memory per session, for ~10% slower prefill and a 30x faster load.
        so.add_session_config_entry("session.disable_prepacking", "1")
        self.session = ort.InferenceSession(str(augmented_path), so, providers=["CPUExecutionProvider"])
        self.names = names
        self.stats = [n + s for n in names for s in (_MIN, _MAX)]
        self.low = np.full(len(names), np.nan, dtype=np.float32)
        self.high = np.full(len(names), np.nan, dtype=np.float32)
        self.feeds = 0
        outputs = {o.name for o in self.session.get_outputs()}
        self.inputs = inputs
        self.taps = sorted(t for t in inputs.tensors if t in outputs) if inputs is not None else []

    def run(self, output_names: list[str], feed: dict) -> list[np.ndarray]:
        outputs = self.session.run([*output_names, *self.stats, *self.taps], feed)
        tapped = outputs[len(outputs) - len(self.taps):]
        for name, values in zip(self.taps, tapped):
            self.inputs.add(name, values)
        outputs = outputs[: len(outputs) - len(self.taps)]
        stats = np.concatenate(outputs[len(output_names):]).reshape(-1, 2)
        # fmin/fmax skip NaN as the calibrator's nanmin/nanmax do.
        self.low, self.high = np.fmin(self.low, stats[:, 0]), np.fmax(self.high, stats[:, 1])
        self.feeds += 1
        return outputs[: len(output_names)]

    def close(self) -> None:
        """Release the session (its copy of the float weights); the ranges stay."""
        self.session = None
        self.weights = None

    def tensors_data(self, fixed: dict[str, tuple[float, float]] | None = None):
        """The ranges as onnxruntime.quantization's TensorsData (MinMax), shaped as its calibrator returns them;
        FIXED maps tensor-name suffixes to ranges that replace the calibrated ones (values outside saturate)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

        def pick(name, lo, hi):
            return next((r for suffix, r in (fixed or {}).items() if name.endswith(suffix)), (lo, hi))

        ranges = {name: tuple(np.array([v], dtype=np.float32) for v in pick(name, lo, hi))
                  for name, lo, hi in zip(self.names, self.low, self.high)}
        return TensorsData(CalibrationMethod.MinMax, ranges)


def tie_ranges(sessions: Iterable[RangeSession], group: Callable[[str], str | None]) -> dict[str, tuple[float, float]]:
    """Give every tensor of one GROUP (a key from its name; None: no group), in any of SESSIONS, the union of their
    ranges, so the quantizer gives them one scale and zero point; returns each group's range."""
    sessions = list(sessions)
    union: dict[str, tuple[float, float]] = {}
    for session in sessions:
        for name, lo, hi in zip(session.names, session.low, session.high):
            key = group(name)
            if key is not None:
                old = union.get(key, (np.nan, np.nan))
                union[key] = (float(np.fmin(old[0], lo)), float(np.fmax(old[1], hi)))
    for session in sessions:
        for k, name in enumerate(session.names):
            key = group(name)
            if key is not None:
                session.low[k], session.high[k] = union[key]
    return union
