"""onnxruntime-genai's decoder: the package's own graph behind genai's inputs, reading the same weights file.

genai feeds attention_mask (int64 [batch, total], ones over the cache and the new tokens) where edgeinfer feeds
seqlens_k and total_sequence_length, never feeds logits_start, and treats logits as last-position-only only when their
sequence dim is the literal 1 (its Model::IsPruned). This module writes a second, small graph file: a few nodes in
front derive GroupQueryAttention's lengths from the mask (as genai's own builder does,
make_attention_mask_reformatting_for_gqa), logits_start becomes the constant -1, and every weight stays an external
reference into the package's one data file. edgeinfer's own decode path is untouched (no mask to build and copy per
token, speculation's logits_start kept) and no weight is stored twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph_contract import ATTENTION_MASK, GREEDY_OUTPUT, LOGITS, LOGITS_START, SEQLENS, TOTAL_LENGTH


def write_genai_graph(decoder: Path, out: Path, all_logits: bool) -> None:
    """Write OUT, genai's view of the dynamic DECODER graph beside it (the same folder, the same external data)."""
    model = onnx.load(str(decoder), load_external_data=False)  # the weights stay where they are
    graph = model.graph
    fed = [i for i in graph.input if i.name not in (SEQLENS, TOTAL_LENGTH, LOGITS_START)]
    takes_start = any(i.name == LOGITS_START for i in graph.input)
    mask = helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch_size", "total_sequence_length"])
    del graph.input[:]
    graph.input.extend([fed[0], mask, *fed[1:]])  # genai's order: input_ids, attention_mask, the cache

    if takes_start:  # genai samples the last position only
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), LOGITS_START))
    # The greedy token is edgeinfer's cuda shortcut; genai reads logits.
    body = [n for n in graph.node if GREEDY_OUTPUT not in n.output]
    del graph.node[:]
    graph.node.extend([*_attention_lengths(graph), *body])
    outputs = [o for o in graph.output if o.name != GREEDY_OUTPUT]
    del graph.output[:]
    graph.output.extend(outputs)
    if not all_logits:
        rows = next(o for o in graph.output if o.name == LOGITS).type.tensor_type.shape.dim[1]
        rows.Clear()
        rows.dim_value = 1
    onnx.save(model, str(out))


def _attention_lengths(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """seqlens_k = ones in each mask row minus one (int32); total_sequence_length = the mask's width (int32 scalar)."""
    graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "genai/mask/one"),
                              numpy_helper.from_array(np.array(1, np.int64), "genai/mask/axis")])
    node = helper.make_node
    return [
        node("ReduceSum", [ATTENTION_MASK, "genai/mask/one"], ["genai/mask/filled"], name="genai/mask/sum", keepdims=0),
        node("Sub", ["genai/mask/filled", "genai/mask/one"], ["genai/mask/last"], name="genai/mask/last"),
        node("Cast", ["genai/mask/last"], [SEQLENS], name="genai/mask/seqlens_k", to=TensorProto.INT32),
        node("Shape", [ATTENTION_MASK], ["genai/mask/shape"], name="genai/mask/shape"),
        node("Gather", ["genai/mask/shape", "genai/mask/axis"], ["genai/mask/width"], name="genai/mask/width", axis=0),
        node("Cast", ["genai/mask/width"], [TOTAL_LENGTH], name="genai/mask/total_sequence_length", to=TensorProto.INT32),
    ]
