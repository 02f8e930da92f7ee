"""The sampler's first step, run where the logits are: the K most likely tokens of a row at a temperature.

A GPU decode step of the 1.5B model takes ~1.8 ms; copying its 152k-token logits row to the host and filtering it
there takes longer than that. This tiny graph, built here and run on the device after a sampled step, hands
the host K ids, their logits / temperature and the row's log-sum-exp: what `sample_from_candidates` needs to
draw exactly as the whole row would whenever the kept set lies within the K (top-k <= K; top-p and min-p on
the peaked rows a trained model gives). Greedy steps never run it: the main graph's argmax serves them.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

CANDIDATES = 64


def candidates_model(vocab_size: int, logits_dtype: np.dtype) -> bytes:
    """logits [1, 1, V], temperature [1] -> top_logits [1, 1, K] (of logits / temperature, best first),
    top_ids [1, 1, K], logsumexp [1, 1, 1] (over the whole row of logits / temperature)."""
    from onnx import TensorProto, helper  # only GPU loads build this graph: CPU loads never import onnx

    k = min(CANDIDATES, vocab_size)
    nodes = [
        helper.make_node("Cast", ["logits"], ["logits_f32"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["logits_f32", "temperature"], ["scaled"]),
        helper.make_node("TopK", ["scaled", "k"], ["top_logits", "top_ids"], axis=-1, largest=1, sorted=1),
        helper.make_node("ReduceLogSumExp", ["scaled", "axis"], ["logsumexp"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "candidates",
        [helper.make_tensor_value_info("logits", helper.np_dtype_to_tensor_dtype(np.dtype(logits_dtype)), [1, 1, vocab_size]),
         helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("top_logits", TensorProto.FLOAT, [1, 1, k]),
         helper.make_tensor_value_info("top_ids", TensorProto.INT64, [1, 1, k]),
         helper.make_tensor_value_info("logsumexp", TensorProto.FLOAT, [1, 1, 1])],
        initializer=[helper.make_tensor("k", TensorProto.INT64, [1], [k]),
                     helper.make_tensor("axis", TensorProto.INT64, [1], [-1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10).SerializeToString()


class CandidateHead:
    """One session of the candidates graph on the logits' device, shared by every runner of a model."""

    def __init__(self, vocab_size: int, logits_dtype: np.dtype, providers: list):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(candidates_model(vocab_size, logits_dtype), so, providers=providers)
        self.k = self.session.get_outputs()[0].shape[-1]  # CANDIDATES, or the whole vocabulary when smaller

    def bind(self, logits: ort.OrtValue) -> "CandidateBinding":
        return CandidateBinding(self, logits)


class CandidateBinding:
    """One runner's use of the head: its logits buffer in, host buffers out, bound once and reused per token."""

    def __init__(self, head: CandidateHead, logits: ort.OrtValue):
        self.session = head.session
        self.binding = head.session.io_binding()
        self.binding.bind_ortvalue_input("logits", logits)
        self._temperature = np.ones(1, dtype=np.float32)
        self._outputs = {"top_logits": np.zeros((1, 1, head.k), np.float32), "top_ids": np.zeros((1, 1, head.k), np.int64),
                         "logsumexp": np.zeros((1, 1, 1), np.float32)}
        # Host OrtValues wrap these arrays: onnxruntime copies into and out of them, nothing is allocated per token.
        self._values = [ort.OrtValue.ortvalue_from_numpy(self._temperature)]
        self.binding.bind_ortvalue_input("temperature", self._values[0])
        for name, array in self._outputs.items():
            self._values.append(ort.OrtValue.ortvalue_from_numpy(array))
            self.binding.bind_ortvalue_output(name, self._values[-1])

    def run(self, temperature: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(ids, logits / TEMPERATURE, log-sum-exp) of the bound logits' most likely tokens, best first."""
        self._temperature[0] = temperature
        self.session.run_with_iobinding(self.binding)
        out = self._outputs
        return out["top_ids"][0, 0].copy(), out["top_logits"][0, 0].copy(), float(out["logsumexp"][0, 0, 0])
