"""What each weight matmul of the cpu/cuda graph reads on real text, for activation-aware 4-bit (weighted_blocks.py).

The float graph of the package is written first (same builder, fp32, into a scratch folder), with the input of
every 4-bit matmul as an extra output; it runs over whole sequences of calibration text (like the qnn path's GPTQ texts:
stdlib sources in the model's chat template, never the sources `edgeinfer verify` and bench/fidelity.py score on)
and each run's inputs fold into X^T X per matmul (gptq.LinearInputs: rows kept until they outnumber the channels).
The float weights are memory-mapped once (calibration.SharedWeights) and the session unpacks nothing.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from ..errors import ExportError
from ..graph_contract import INPUT_IDS, LOGITS_START, SEQLENS, TOTAL_LENGTH, cache_pairs
from .gptq import LinearInputs
from .options import ExportOptions
from .sources import WeightSource

# Stdlib sources (code and its docstrings) and the language reference's prose, as chat messages; none of these is
# scored by bench/fidelity.py (textwrap, the license) or `edgeinfer verify` (textwrap, argparse).
CALIBRATION_MODULES = ("json.decoder", "functools", "heapq", "string", "pydoc_data.topics")
SEQUENCE_TOKENS = 512  # tokens per run: attention within the sequence, as in a real chat
DEFAULT_TOKENS = 2560  # the five texts, 512 tokens each: four of code with its docstrings, one of prose


def calibration_sequences(weights: WeightSource, tokens: int) -> list[list[int]]:
    """About TOKENS tokens of real text in sequences of SEQUENCE_TOKENS, each a user message in the model's template."""
    from .qdq import chat_prompts, module_source

    count = max(1, -(-tokens // SEQUENCE_TOKENS))
    texts = [_docs_prose() if m == "pydoc_data.topics" else module_source(m) for m in CALIBRATION_MODULES[:count]]
    sequences = [ids[:SEQUENCE_TOKENS] for ids in chat_prompts(weights, texts, SEQUENCE_TOKENS)]
    if not sequences:
        raise ExportError("the calibration texts could not be tokenized: check the source's tokenizer")
    return sequences


def _docs_prose() -> str:
    """The Python language reference's topics (prose with a few examples), as pydoc ships them."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def collect_linear_inputs(weights: WeightSource, options: ExportOptions, scratch: Path, tokens: int = DEFAULT_TOKENS,
                          progress: bool = True) -> tuple[LinearInputs, dict[str, str]]:
    """Run the float graph of WEIGHTS over the calibration text; returns the gathered inputs and, per matmul node
    name, the tensor it reads (the key into the inputs)."""
    import onnxruntime as ort

    from .calibration import SharedWeights
    from .dynamic_graph import DynamicDecoderGraph, spare_cache_rows
    from .onnx_writer import GraphWriter

    started = time.perf_counter()
    sequences = calibration_sequences(weights, tokens)
    length = max(map(len, sequences))
    float_options = replace(options, precision="fp32", all_logits=False, context_length=length, target="cpu")
    spec = weights.spec
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".calibration-") as tmp:
        folder = Path(tmp)
        writer = GraphWriter(folder / "float.onnx.data")
        try:
            graph = DynamicDecoderGraph(writer, weights, float_options)
            graph.build(progress)
            reads = dict(graph.linear_inputs)
            for x in sorted(set(reads.values())):
                writer.outputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
            writer.save(folder / "float.onnx", producer="edgeinfer calibration")
        finally:
            writer.close()
        inputs = LinearInputs(set(reads.values()))
        taps = sorted(inputs.tensors)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.disable_prepacking", "1")  # read the mapped weights as they lie
        shared = SharedWeights()
        shared.add_to(so, folder / "float.onnx")
        session = ort.InferenceSession(str(folder / "float.onnx"), so, providers=["CPUExecutionProvider"])
        graph_inputs = {i.name for i in session.get_inputs()}
        for ids in sequences:
            cache = np.zeros((1, spec.num_kv_heads, length + spare_cache_rows(float_options), spec.head_dim), dtype=np.float32)
            feed = {INPUT_IDS: np.array([ids], dtype=np.int64), SEQLENS: np.array([len(ids) - 1], dtype=np.int32),
                    TOTAL_LENGTH: np.array(len(ids), dtype=np.int32)}
            feed.update({past: cache for past, _ in cache_pairs(spec.num_layers)})
            if LOGITS_START in graph_inputs:  # the last row only: calibration reads the matmuls' inputs
                feed[LOGITS_START] = np.array([-1], dtype=np.int64)
            for name, values in zip(taps, session.run(taps, feed)):
                inputs.add(name, values)
        del session, shared
    if progress:
        print(f"calibration: {sum(map(len, sequences))} tokens of real text through the float graph in "
              f"{time.perf_counter() - started:.1f} s")
    return inputs, reads


class CalibratedInputs:
    """LinearStatistics over gathered inputs: each matmul's mean x x^T, released as it is handed out."""

    def __init__(self, inputs: LinearInputs, reads: dict[str, str]):
        self.inputs, self.reads = inputs, reads

    def hessian(self, node: str) -> np.ndarray | None:
        tensor = self.reads.get(node)
        if tensor is None or tensor not in self.inputs.rows:
            return None
        count = self.inputs.counts[tensor]
        h = self.inputs.hessian(tensor)
        h /= max(count, 1)
        return h
