"""W4A16 for QNN in Qualcomm's sense: 4-bit integer weights, 16-bit integer activations, as standard QDQ.

Calibration runs the float static graphs on the CPU EP over a few chat-template prompts (prefill, then a few
greedy decode steps, so the KV-cache inputs see realistic contents), folding MinMax activation ranges as it goes
(calibration.py); then onnxruntime.quantization writes QuantizeLinear/DequantizeLinear around every op.

Weight encoding: signed INT4, symmetric, zero point 0 given explicitly, one scale per block of input rows of each
output channel (DequantizeLinear axis=0, block_size; int4_blocks.py). The quantizer writes per-channel int4 (the
override below), then block_weights re-encodes each weight from the float graph in blocks. Symmetric with an
explicit zero point is the int4 form the HTP reads the same way as the CPU EP does; with the quantizer's QNN default
(asymmetric int4) the HTP's output differed from the CPU EP's run of the same QDQ model by ~67-70% (relative max
error; ../shared/recipes/qnn.md). lm_head is int8 per channel: it decides the token, and 8 bits cost only its own
size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ExportError
from ..graph_contract import cache_slot_of
from .calibration import RangeSession, augment, tie_ranges
from .options import ExportOptions
from .sources import WeightSource

CALIBRATION_PROMPTS = (
    "What is the capital of France, and why did it become the capital?",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Solve for x: 3x + 7 = 22. Show your steps.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "Explain in simple words how a transformer language model predicts the next token.",
    "List five uses of a paperclip that are not holding paper.",
)
DECODE_STEPS = 6  # greedy steps after each prompt: decode graphs calibrate on real cache contents
# Then one chat prompt holding real text (stdlib source) and TEXT_DECODE_STEPS of its tokens fed one at a time.
# The 36 greedy decode steps alone left the decode graphs' ranges far too narrow on real weights: Qwen2.5's
# layer-0 scores against the first key reach 12,900 for some query tokens of Python source but 2,661 in those
# steps, and saturating them cost 26 dB of the layer's SQNR (2-layer truncation of Qwen2.5-Coder-1.5B).
TEXT_DECODE_STEPS = 96
HEAD_WEIGHT = "lm_head.weight"


def calibration_prompts(weights: WeightSource, limit: int) -> list[list[int]]:
    """The prompts as the model will see them: rendered with its own chat template and tokenizer."""
    from tokenizers import Tokenizer

    from ..chat import ChatFormat, chat_format_name
    from ..tokenizer import TextTokenizer

    files = weights.tokenizer()
    tokenizer = TextTokenizer(Tokenizer.from_str(files.tokenizer_json), files.tokenizer_config(),
                              files.bos_token_id, files.add_bos_token)
    chat = ChatFormat(tokenizer, files.chat_template, chat_format_name(files.chat_template), limit)
    vocab = weights.spec.vocab_size
    prompts = []
    for text in (*CALIBRATION_PROMPTS, calibration_text()):
        ids = [i for i in chat.encode(text) if i < vocab][:limit]
        if ids:
            prompts.append(ids)
    return prompts


def calibration_text() -> str:
    """Real text that every Python installation has: the source of json.encoder."""
    import inspect
    import json.encoder

    return inspect.getsource(json.encoder)


def calibrate(weights: WeightSource, graphs: dict, float_folder: Path, embeddings: np.ndarray,
              options: ExportOptions, prompts: list[list[int]], configs: dict) -> dict[tuple[str, int], RangeSession]:
    """Generate from PROMPTS with the float graphs on the CPU EP, each augmented to fold its activation ranges as
    it runs (see calibration.py); returns the ranges per (role, part)."""
    from ..static_runner import StaticRunner
    from ..graph_contract import MASK_VALUE

    sessions = {}
    for role in ("prefill", "decode"):
        for k, part in enumerate(graphs[role]["parts"]):
            path, names = augment(float_folder / part["file"], set(configs[(role, k)].op_types_to_quantize))
            sessions.setdefault(role, []).append(RangeSession(path, names))
    host = {"attention_mask": {"value": MASK_VALUE}}
    chunk = graphs["prefill"]["tokens"]
    for k, ids in enumerate(prompts):
        runner = StaticRunner(sessions, {**graphs, "host": host}, weights.spec, options.context_length, embeddings)
        if k == len(CALIBRATION_PROMPTS):  # the real text: one prefill chunk, then its next tokens as decode steps
            text = ids[: min(len(ids), chunk + TEXT_DECODE_STEPS, options.context_length)]
            runner.forward(text[: min(chunk, len(text) - 1)], 0)
            for position in range(min(chunk, len(text) - 1), len(text)):
                runner.forward([text[position]], position)
            continue
        logits = runner.forward(ids, 0)
        for step in range(DECODE_STEPS):
            logits = runner.forward([int(np.argmax(logits))], len(ids) + step)
    return {(role, k): session for role in sessions for k, session in enumerate(sessions[role])}


def weight_overrides(model_path: Path, eight_bit: set[str]) -> dict[str, list[dict]]:
    """Every MatMul weight symmetric per output channel: int8 for lm_head and EIGHT_BIT, int4 (later re-encoded in
    blocks by block_weights) for the rest."""
    import onnx
    from onnxruntime.quantization import QuantType

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    overrides = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            bits = QuantType.QInt8 if node.input[1] == HEAD_WEIGHT or node.input[1] in eight_bit else QuantType.QInt4
            overrides[node.input[1]] = [{"quant_type": bits, "symmetric": True, "axis": 1}]
    return overrides


def quantize_config(float_path: Path, eight_bit: set[str]):
    """onnxruntime's QNN QDQ settings (which ops, which types) with our weight encodings."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    return get_qnn_qdq_config(
        str(float_path), None, activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8,
        per_channel=False, init_overrides=weight_overrides(float_path, eight_bit),
    )


def quantize_graph(float_path: Path, out_path: Path, config, ranges: RangeSession, fixed_ranges: dict) -> None:
    """Quantize with the ranges already calibrated: they go in as the quantizer's calibration cache, so it
    runs no calibrator of its own (and never holds feeds)."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = float_path.with_name(f"{float_path.stem}.ranges.json")
    save_tensors_data(ranges.tensors_data(fixed_ranges), cache)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" warnings do not apply to these graphs
    try:
        quantize_static(
            str(float_path), str(out_path), None, calibrate_method=config.calibrate_method,
            quant_format=config.quant_format, activation_type=config.activation_type, weight_type=config.weight_type,
            op_types_to_quantize=config.op_types_to_quantize, nodes_to_exclude=config.nodes_to_exclude,
            per_channel=config.per_channel, reduce_range=config.reduce_range,
            use_external_data_format=True,  # weights in <file>.onnx.data, as every edgeinfer graph
            extra_options=config.extra_options, calibration_cache_path=cache,
        )
    finally:
        root.setLevel(level)


def block_weights(graph_path: Path, float_path: Path, block: int) -> int:
    """Re-encode GRAPH_PATH's per-channel int4 MatMul weights in blocks of BLOCK input rows, from FLOAT_PATH's float
    weights (read one tensor at a time); returns how many weights changed. The graph and its data file are rewritten."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from .int4_blocks import block_size_for, int4_blocks

    model = onnx.load(str(graph_path))
    floats = {i.name: i for i in onnx.load(str(float_path), load_external_data=False).graph.initializer}
    tensors = {i.name: i for i in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        zero = tensors.get(node.input[2]) if node.op_type == "DequantizeLinear" and len(node.input) > 2 else None
        original = floats.get(node.input[0].removesuffix("_quantized"))
        if zero is None or zero.data_type != TensorProto.INT4 or original is None:
            continue
        weight = numpy_helper.to_array(original, base_dir=str(float_path.parent))  # [K, N]
        size = block_size_for(weight.shape[0], block)
        if size is None:
            continue
        q, scales = int4_blocks(weight, size)
        _set_int4(tensors[node.input[0]], q)
        _set_int4(zero, np.zeros(scales.shape, dtype=np.int8))
        scale = tensors[node.input[1]]
        scale.CopyFrom(numpy_helper.from_array(scales.astype(numpy_helper.to_array(scale).dtype), scale.name))
        del node.attribute[:]
        node.attribute.extend([onnx.helper.make_attribute("axis", 0), onnx.helper.make_attribute("block_size", size)])
        changed += 1
    data = graph_path.with_name(graph_path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, str(graph_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=1024)
    return changed


def _set_int4(tensor, values: np.ndarray) -> None:
    """TENSOR (an INT4 TensorProto) := VALUES (int8 in -8..7), packed two per byte, low nibble first."""
    flat = values.astype(np.int8).reshape(-1).view(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    tensor.ClearField("int32_data")
    tensor.ClearField("external_data")
    tensor.data_location = 0  # DEFAULT: the bytes live in raw_data until onnx.save moves them out again
    tensor.raw_data = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()
    del tensor.dims[:]
    tensor.dims.extend(values.shape)


def quantize_graphs(weights: WeightSource, graphs: dict, float_folder: Path, folder: Path, options: ExportOptions,
                    progress: bool, fixed_ranges: dict, eight_bit: set[str]) -> dict:
    """Calibrate and quantize every float graph of FLOAT_FOLDER into FOLDER (same file names). FIXED_RANGES:
    activation ranges by name suffix that the graph builder sets instead of calibration; EIGHT_BIT: the weight
    initializers kept at int8 (weight_bits.py: where Q4_K_M keeps 6 bits, or where the GGUF stored more than 4)."""
    started = time.perf_counter()
    prompts = calibration_prompts(weights, options.context_length - DECODE_STEPS - 1)
    if not prompts:
        raise ExportError("no calibration prompt could be tokenized: check the source's tokenizer")
    from ..graph_contract import EMBEDDINGS_FILE

    embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
    steps = [(role, k, part) for role in ("prefill", "decode") for k, part in enumerate(graphs[role]["parts"])]
    configs = {(role, k): quantize_config(float_folder / part["file"], eight_bit) for role, k, part in steps}
    ranges = calibrate(weights, graphs, float_folder, embeddings, options, prompts, configs)
    # One host cache serves past and new of both roles: one range per slot gives them one scale and zero point,
    # so the host copies the graphs' uint16 rows as they come (quantized_io.py).
    tie_ranges(ranges.values(), cache_slot_of)
    feeds = {key: session.feeds for key, session in ranges.items()}
    for session in ranges.values():
        session.close()  # the float sessions' memory goes back before the quantizer loads the weights
    calibrate_s = time.perf_counter() - started
    for role, k, part in tqdm(steps, desc="quantize", unit="graph", disable=not progress, leave=False):
        quantize_graph(float_folder / part["file"], folder / part["file"], configs[(role, k)], ranges[(role, k)], fixed_ranges)
        block_weights(folder / part["file"], float_folder / part["file"], options.block_size)
    return {
        "scheme": "W4A16 QDQ (onnxruntime.quantization, get_qnn_qdq_config)",
        "weights": f"int4 signed, symmetric (zero point 0, explicit), blocks of {options.block_size} input rows "
                   f"on the LPBQ grid; {len(eight_bit)} matmuls int8 per output channel",
        "int8_weights": sorted(eight_bit),
        "lm_head": "int8 signed, symmetric, per output channel",
        "activations": "uint16 asymmetric, MinMax calibration",
        "kv_cache": "uint16 on the host and at the graph inputs and outputs; one scale and zero point per slot",
        "host_float": ["embeddings (fp16 table, gathered on the host)", "rotary cos/sin", "attention mask", "sampling"],
        "calibration": {
            "prompts": len(prompts), "prompt_tokens": sum(len(p) for p in prompts), "decode_steps": DECODE_STEPS,
            "text_decode_steps": TEXT_DECODE_STEPS,
            "chat_template": True, "feeds": {f"{role}.{k}": n for (role, k), n in feeds.items()},
            "seconds": round(time.perf_counter() - started, 1), "collect_seconds": round(calibrate_s, 1),
        },
    }
