"""W4A16 for QNN in Qualcomm's sense: 4-bit integer weights, 16-bit integer activations, as standard QDQ.

Calibration runs the float static graphs on the CPU EP over a few chat-template prompts (prefill, then a few
greedy decode steps, so the KV-cache inputs see realistic contents) and real text, folding MinMax activation
ranges as it goes (calibration.py) and gathering the weight matmuls' inputs for GPTQ. The weights are then encoded
once per part (qdq_weights.py: int4 blocks on the LPBQ grid rounded by GPTQ, int8 for lm_head and the layers that
keep 8 bits) and written into each graph as DequantizeLinear inputs; onnxruntime.quantization, given the ranges as
its calibration cache, places the activations' uint16 QuantizeLinear/DequantizeLinear around every op.

Symmetric weights with an explicit zero point are the int4 form the HTP reads the same way as the CPU EP does; with
the quantizer's QNN default (asymmetric int4) the HTP's output differed from the CPU EP's run of the same QDQ model
by ~67-70% (relative max error; ../shared/recipes/qnn.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ExportError
from ..graph_contract import cache_slot_of
from .calibration import RangeSession, SharedWeights, augment, tie_ranges
from .gptq import LinearInputs
from .onnx_writer import WeightsFile
from .options import ExportOptions
from .qdq_weights import encode_weights, gptq_inputs, prequantized_graph
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
RANGE_TEXT_MODULE = "json.encoder"
TEXT_DECODE_STEPS = 96
# GPTQ needs the weight matmuls' inputs on more tokens than the ranges do (an 8,960-wide down_proj input): real
# text in whole prefill chunks, up to SEQUENCE_TOKENS of each of these stdlib sources as a chat message (never the
# sources `edgeinfer verify` scores on: textwrap, argparse).
GPTQ_TEXT_MODULES = ("json.decoder", "functools", "heapq", "string")
SEQUENCE_TOKENS = 512


def chat_prompts(weights: WeightSource, texts, limit: int) -> list[list[int]]:
    """TEXTS as the model will see them: user messages in its own chat template, at most LIMIT tokens each."""
    from tokenizers import Tokenizer

    from ..chat import ChatFormat, chat_format_name
    from ..tokenizer import TextTokenizer

    files = weights.tokenizer()
    tokenizer = TextTokenizer(Tokenizer.from_str(files.tokenizer_json), files.tokenizer_config(),
                              files.bos_token_id, files.add_bos_token)
    chat = ChatFormat(tokenizer, files.chat_template, chat_format_name(files.chat_template), limit)
    vocab = weights.spec.vocab_size
    return [ids for ids in ([i for i in chat.encode(text) if i < vocab][:limit] for text in texts) if ids]


def module_source(module: str) -> str:
    """Real text that every Python installation has: the source of a stdlib module."""
    import importlib
    import inspect

    return inspect.getsource(importlib.import_module(module))


def calibrate(weights: WeightSource, graphs: dict, float_folder: Path, embeddings: np.ndarray, options: ExportOptions,
              configs: dict, inputs: LinearInputs | None) -> tuple[dict[tuple[str, int], RangeSession], dict]:
    """Generate from the calibration prompts with the float graphs on the CPU EP, each augmented to fold its
    activation ranges as it runs (see calibration.py); returns the ranges per (role, part) and what was run. With
    INPUTS, the weight matmuls' inputs go there too, and the GPTQ texts run as well."""
    from ..graph_contract import MASK_VALUE
    from ..static_runner import StaticRunner

    limit = options.context_length - DECODE_STEPS - 1
    gptq_texts = GPTQ_TEXT_MODULES if inputs is not None else ()
    texts = [*CALIBRATION_PROMPTS, *map(module_source, (RANGE_TEXT_MODULE, *gptq_texts))]
    encoded = chat_prompts(weights, texts, limit)  # one tokenizer for all (a 152k vocabulary takes a second to load)
    if len(encoded) != len(texts):
        raise ExportError("a calibration text could not be tokenized: check the source's tokenizer")
    prompts, text, sequences = (encoded[: len(CALIBRATION_PROMPTS)], encoded[len(CALIBRATION_PROMPTS)],
                                encoded[len(CALIBRATION_PROMPTS) + 1 :])
    chunk = graphs["prefill"]["tokens"]
    taps = inputs.tensors if inputs is not None else frozenset()
    shared = SharedWeights()  # prefill and decode read one mapping of their weights (kept alive by the sessions)
    sessions = {}
    for role in ("prefill", "decode"):
        for k, part in enumerate(graphs[role]["parts"]):
            path, names = augment(float_folder / part["file"], set(configs[(role, k)].op_types_to_quantize), taps)
            sessions.setdefault(role, []).append(RangeSession(path, names, inputs, shared))
    del shared
    host = {"attention_mask": {"value": MASK_VALUE}}

    def runner() -> StaticRunner:
        return StaticRunner(sessions, {**graphs, "host": host}, weights.spec, options.context_length, embeddings)

    for ids in prompts:
        if inputs is not None:
            inputs.real_rows = len(ids) % chunk or chunk  # the last chunk is left-padded: its first rows are not data
        generator = runner()
        logits = generator.forward(ids, 0)
        if inputs is not None:
            inputs.real_rows = None
        for step in range(DECODE_STEPS):
            logits = generator.forward([int(np.argmax(logits))], len(ids) + step)
    # The real text: one prefill chunk, then its next tokens as decode steps.
    ids = text[: min(len(text), chunk + TEXT_DECODE_STEPS, options.context_length)]
    generator = runner()
    generator.forward(ids[: min(chunk, len(ids) - 1)], 0)
    for position in range(min(chunk, len(ids) - 1), len(ids)):
        generator.forward([ids[position]], position)
    run = {"prompts": len(prompts) + 1, "prompt_tokens": sum(map(len, prompts)) + len(ids), "decode_steps": DECODE_STEPS,
           "text": RANGE_TEXT_MODULE, "text_decode_steps": TEXT_DECODE_STEPS, "chat_template": True}
    if inputs is not None:  # GPTQ's texts: whole chunks, no padding
        length = min(SEQUENCE_TOKENS, limit - limit % chunk)
        for ids in (ids[: min(length, len(ids) - len(ids) % chunk)] for ids in sequences):
            if ids:
                runner().forward(ids, 0)
        run["gptq"] = {"texts": list(GPTQ_TEXT_MODULES), "rows": max(inputs.counts.values(), default=0)}
    ranges = {(role, k): session for role in sessions for k, session in enumerate(sessions[role])}
    run["feeds"] = {f"{role}.{k}": session.feeds for (role, k), session in ranges.items()}
    return ranges, run


def quantize_config(path: Path, op_types: list[str] | None = None):
    """onnxruntime's QNN QDQ settings (which ops, which types) for PATH's activations. For a graph whose weights
    come encoded, OP_TYPES are its float graph's, so the DequantizeLinear nodes are not quantized again."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    # The product's first input reaches the MatMul as int16 symmetric (a conversion after its producer); every other
    # tensor keeps uint16. Given raw (add_qtype_converts off): the quantizer's fixer would make all of the MatMul's
    # tensors int16, which the HTP refuses.
    converted = {name: [{"quant_type": QuantType.QUInt16,
                         "convert": {"quant_type": QuantType.QInt16, "symmetric": True, "recv_nodes": {node}}}]
                 for name, node in activation_matmul_lhs(onnx.load(str(path), load_external_data=False))}
    return get_qnn_qdq_config(str(path), None, activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8,
                              per_channel=False, op_types_to_quantize=op_types, init_overrides=converted or None,
                              add_qtype_converts=False)


def activation_matmul_lhs(model) -> list[tuple[str, str]]:
    """(first input, node name) of every MatMul of two activations (attention's q x k^T and probabilities x values). The HTP
    multiplies two uint16 tensors with the second cut to 8 bits (scores off by 0.2-0.4% of their size on Qwen2.5's
    layer 0, where the CPU EP keeps them to half a 16-bit step); with the first input int16 symmetric it keeps
    both at 16 bits (bench/qnn_op_taps.py)."""
    weights = {i.name for i in model.graph.initializer}
    produced = {out: node for node in model.graph.node for out in node.output}

    def is_weight(name: str) -> bool:
        node = produced.get(name)
        return name in weights or (node is not None and node.op_type == "DequantizeLinear" and node.input[0] in weights)

    return [(n.input[0], n.name) for n in model.graph.node if n.op_type == "MatMul" and not is_weight(n.input[1])]


def quantize_graph(source_path: Path, out_path: Path, config, ranges: RangeSession, fixed_ranges: dict) -> None:
    """Quantize SOURCE_PATH (a float graph whose weights come encoded, prequantized_graph) with the ranges already
    calibrated: they go in as the quantizer's calibration cache, so it runs no calibrator of its own (and never holds
    feeds)."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = source_path.with_name(f"{source_path.stem}.ranges.json")
    save_tensors_data(ranges.tensors_data(fixed_ranges), cache)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" warnings do not apply to these graphs
    try:
        quantize_static(
            str(source_path), str(out_path), None, calibrate_method=config.calibrate_method,
            quant_format=config.quant_format, activation_type=config.activation_type, weight_type=config.weight_type,
            op_types_to_quantize=config.op_types_to_quantize, nodes_to_exclude=config.nodes_to_exclude,
            per_channel=config.per_channel, reduce_range=config.reduce_range,
            use_external_data_format=True,  # weights in <file>.onnx.data, as every edgeinfer graph
            extra_options=config.extra_options, calibration_cache_path=cache,
        )
    finally:
        root.setLevel(level)



def quantize_graphs(weights: WeightSource, graphs: dict, float_folder: Path, folder: Path, options: ExportOptions,
                    progress: bool, fixed_ranges: dict, eight_bit: set[str]) -> dict:
    """Calibrate and quantize every float graph of FLOAT_FOLDER into FOLDER (same file names). FIXED_RANGES:
    activation ranges by name suffix that the graph builder sets instead of calibration; EIGHT_BIT: the weight
    initializers kept at int8 (weight_bits.py: where Q4_K_M keeps 6 bits, or where the GGUF stored more than 4)."""
    from ..graph_contract import EMBEDDINGS_FILE

    started = time.perf_counter()
    embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
    steps = [(role, k, part) for role in ("prefill", "decode") for k, part in enumerate(graphs[role]["parts"])]
    configs = {(role, k): quantize_config(float_folder / part["file"]) for role, k, part in steps}
    inputs = None
    if options.gptq:
        tensors = [gptq_inputs(float_folder / part["file"], eight_bit) for part in graphs["prefill"]["parts"]]
        inputs = LinearInputs(set().union(*tensors))
    ranges, run = calibrate(weights, graphs, float_folder, embeddings, options, configs, inputs)
    # One host cache serves past and new of both roles: one range per slot gives them one scale and zero point,
    # so the host copies the graphs' uint16 rows as they come (quantized_io.py).
    tie_ranges(ranges.values(), cache_slot_of)
    # shared_role_ranges: prefill and decode of a part quantize each tensor on one grid, so a speculative verify run
    # (the prefill graph) computes what decode steps would. Ranges per role parted 2 of 6 tiny-preset greedy replies
    # (CPU EP, 40 tokens) from plain decoding; tied, none.
    if options.shared_role_ranges:
        for k in range(len(graphs["prefill"]["parts"])):
            tie_ranges([ranges[("prefill", k)], ranges[("decode", k)]], lambda name: name)
    for session in ranges.values():
        session.close()  # the float sessions' memory goes back before the weights are encoded
    collect_s = time.perf_counter() - started
    encoded = {}
    for k, part in enumerate(tqdm(graphs["prefill"]["parts"], desc="weights", unit="part", disable=not progress, leave=False)):
        store = WeightsFile(float_folder / f"{Path(part['file']).stem}.qdq-weights")
        try:
            encodings = encode_weights(float_folder / part["file"], eight_bit, options.block_size, inputs, store)
            for role in ("prefill", "decode"):
                source = float_folder / graphs[role]["parts"][k]["file"]
                prequantized_graph(source, source.with_suffix(".qdq.onnx"), encodings, store)
        finally:
            store.close()
        encoded.update(encodings)
    encode_s = time.perf_counter() - started - collect_s
    for role, k, part in tqdm(steps, desc="quantize", unit="graph", disable=not progress, leave=False):
        source = (float_folder / part["file"]).with_suffix(".qdq.onnx")
        config = quantize_config(source, configs[(role, k)].op_types_to_quantize)
        quantize_graph(source, folder / part["file"], config, ranges[(role, k)], fixed_ranges)
        part["data"] = f"{part['file']}.data"  # the quantizer's own file; share_weight_files merges prefill's and decode's
    rounding = " and ".join(sorted({e.rounding for e in encoded.values() if e.bits == 4}))
    return {
        "scheme": "W4A16 QDQ (weights: edgeinfer; activations: onnxruntime.quantization, get_qnn_qdq_config)",
        "weights": f"int4 signed, symmetric (zero point 0, explicit), blocks of {options.block_size} input rows "
                   f"on the LPBQ grid, rounded by {rounding}; {len(eight_bit)} matmuls int8 per output channel",
        "int8_weights": sorted(eight_bit),
        "lm_head": "int8 signed, symmetric, per output channel",
        "activations": "uint16 asymmetric, MinMax calibration",
        "kv_cache": "uint16 on the host and at the graph inputs and outputs; one scale and zero point per slot",
        "host_float": ["embeddings (fp16 table, gathered on the host)", "rotary cos/sin", "attention mask", "sampling"],
        "calibration": {**run, "seconds": round(time.perf_counter() - started, 1), "collect_seconds": round(collect_s, 1),
                        "encode_seconds": round(encode_s, 1)},
    }
