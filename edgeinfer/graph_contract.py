"""The graph contract: the names and tables the exporter writes and the runtime reads.

Both sides import this module and neither imports the other, so loading a package never pulls in onnx,
the quantizer or the graph builders. Runners find inputs and outputs by these names, never by position.

Dynamic graphs (cpu, cuda): input_ids, seqlens_k, total_sequence_length, logits_start (minus the number of last rows
that get logits: -1 to sample, -(k+1) to verify k proposed tokens) and one past input per layer and kind; logits, one
present output per layer and kind, and on cuda the greedy token of each logits row.
Static graphs (qnn), one or more parts per role: the hidden state in (inputs_embeds for the first part), rotary
rows (one table per RoPE the layers use), the additive masks (one per attention window) and each layer's past;
the hidden state out (logits for the last part) and each layer's new rows of the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .architecture import ArchSpec

CACHE_KINDS = ("key", "value")

# Dynamic graphs.
INPUT_IDS, SEQLENS, TOTAL_LENGTH = "input_ids", "seqlens_k", "total_sequence_length"
LOGITS = "logits"
# Where the logits rows start, counted from the end (host memory, int64 [1]): the Slice reads it as it is, so no node
# sits between a host input and the GPU (a node off the GPU would keep the decode step from being one CUDA graph).
LOGITS_START = "logits_start"
LOGITS_ROWS = "logits_rows"  # cpu packages of 2026-12-01 took the row count instead (the runner still feeds it)
GREEDY_OUTPUT = "next_token"  # cuda packages: argmax of each logits row, so greedy decode moves one id to the host


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def dynamic_io(num_layers: int, greedy_output: bool = False, logits_start: bool = True) -> dict[str, list[str]]:
    """The dynamic graph's input and output names, in the order the exporter declares them."""
    cache = [(i, kind) for i in range(num_layers) for kind in CACHE_KINDS]
    return {
        "inputs": [INPUT_IDS, SEQLENS, TOTAL_LENGTH, *([LOGITS_START] if logits_start else []),
                   *(past_name(i, k) for i, k in cache)],
        "outputs": [LOGITS, *(present_name(i, k) for i, k in cache), *([GREEDY_OUTPUT] if greedy_output else [])],
    }


# onnxruntime-genai's view of a dynamic package (export/genai_graph.py, export/genai_config.py): its config and a
# decoder graph that takes genai's int64 attention_mask instead of seqlens_k/total_sequence_length/logits_start and
# reads the same weights file.
GENAI_CONFIG, GENAI_DECODER = "genai_config.json", "genai_model.onnx"


def cache_pairs(num_layers: int) -> list[tuple[str, str]]:
    """(past input, present output) of every layer and kind: the pairs a runner binds to one buffer each."""
    return [(past_name(i, k), present_name(i, k)) for i in range(num_layers) for k in CACHE_KINDS]


# Static graphs.
EMBEDS_IN, HIDDEN_IN, HIDDEN_OUT = "inputs_embeds", "hidden_in", "hidden_out"
POSITION_COS, POSITION_SIN, ATTENTION_MASK = "position_cos", "position_sin", "attention_mask"


# What the host feeds beside the static graphs.
EMBEDDINGS_FILE = "embeddings.npy"  # [vocab, hidden]: the host gathers each token's row
# Additive host mask. Qwen2's attention scores run to thousands (layer 0 of Qwen2.5-Coder-1.5B: [-1935, 12864] on
# real text, the first token's key taking the largest), so a row's real scores can all lie far below an empty
# slot's 0: -100 let empty slots win (float static graph 79% top-1 vs the dynamic one on a 2-layer truncation of
# the real model; 100% at -30000). The mask only reaches the row max; the softmax reads the scores after the
# max is subtracted, where a fixed 16-bit range (static_graph.SHIFTED_RANGE) saturates masked and negligible entries alike.
MASK_VALUE = -30000.0


def cache_slot(layer: int, kind: str) -> str:
    """The host cache's key for one layer and kind; static inputs are past_<slot>, outputs new_<slot>."""
    return f"{kind}.{layer}"


def cache_slot_of(name: str) -> str | None:
    """The cache slot a static graph's past_<slot> input or new_<slot> output binds; None for any other name."""
    for prefix in ("past_", "new_"):
        slot = name.removeprefix(prefix)
        kind, _, layer = slot.partition(".")
        if slot != name and kind in CACHE_KINDS and layer.isdigit() and cache_slot(int(layer), kind) == slot:
            return slot
    return None


def static_io(layers: tuple[int, int], first: bool, last: bool) -> dict[str, list[str]]:
    """A static part's input and output names for layers [start, stop)."""
    slots = [cache_slot(i, kind) for i in range(*layers) for kind in CACHE_KINDS]
    return {
        "inputs": [EMBEDS_IN if first else HIDDEN_IN, POSITION_COS, POSITION_SIN, ATTENTION_MASK,
                   *(f"past_{slot}" for slot in slots)],
        "outputs": [LOGITS if last else HIDDEN_OUT, *(f"new_{slot}" for slot in slots)],
    }


def cache_rows(kv_cache: dict) -> int:
    """Rows of a dynamic package's cache buffer (manifest kv_cache): the context, and the spare rows that decode's
    padding row lands in (export/dynamic_graph.spare_cache_rows)."""
    return kv_cache["length"] + kv_cache.get("spare_rows", 0)


def rotary_tables(spec: "ArchSpec", length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of [ropes, length, rotary_dims / 2]: one table per RoPE the layers use (spec.ropes(), rope.py), of the
    non-interleaved (GPT-NeoX) rotary that Hugging Face's Llama-family models use."""
    from .rope import rotary_table

    tables = [rotary_table(spec.rotary_dims, theta, scaling, spec.max_position_embeddings, length)
              for theta, scaling in spec.ropes()]
    return np.stack([cos for cos, _ in tables]), np.stack([sin for _, sin in tables])


def static_shapes(graphs: dict, spec: "ArchSpec", context: int, role: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every input and output of ROLE's parts, by name. The cache is in graphs.host.kv_cache's
    dtype where the package records one (uint16 QDQ packages), float32 otherwise; every other tensor is float32."""
    n, d, kvh, hidden = graphs[role]["tokens"], spec.head_dim, spec.num_kv_heads, spec.hidden_size
    encoding = graphs["host"].get("kv_cache")  # absent: float32 cache I/O (fp32 packages, calibration)
    cache_dtype = encoding["dtype"] if encoding else "float32"
    ropes, masks, pairs = len(spec.ropes()), len(spec.windows()), spec.rotary_dims // 2
    fixed = {EMBEDS_IN: (1, n, hidden), HIDDEN_IN: (1, n, hidden), HIDDEN_OUT: (1, n, hidden),
             POSITION_COS: (1, ropes, n, pairs), POSITION_SIN: (1, ropes, n, pairs),
             ATTENTION_MASK: (1, masks, n, context + n),
             LOGITS: (1, graphs[role].get("logits_rows", 1), spec.vocab_size)}  # the last part's: its last rows only
    shapes = {}
    for part in graphs[role]["parts"]:
        for name in (*part["inputs"], *part["outputs"]):
            if cache_slot_of(name) is None:
                shapes[name] = (fixed[name], "float32")
            else:
                shapes[name] = ((1, kvh, context if name.startswith("past_") else n, d), cache_dtype)
    return shapes


def static_step_bytes(graphs: dict, spec: "ArchSpec", context: int, role: str = "decode") -> dict[str, int]:
    """Bytes one run of ROLE moves across the graph boundary (every part's inputs and outputs), from the manifest's
    graphs (static_shapes): {"cache": the past and new K/V tensors, "total": everything, "outputs": what the graphs
    write (new rows, hidden states, logits: what session.run allocates each run), "new_rows": the new K/V rows
    (what the host copies into its cache each run)}."""
    shapes = static_shapes(graphs, spec, context, role)
    size = {name: int(np.prod(shape)) * np.dtype(dtype).itemsize for name, (shape, dtype) in shapes.items()}
    moved = {"cache": 0, "total": 0, "outputs": 0, "new_rows": 0}
    for part in graphs[role]["parts"]:
        for name in (*part["inputs"], *part["outputs"]):
            moved["total"] += size[name]
            moved["cache"] += size[name] if cache_slot_of(name) else 0
        for name in part["outputs"]:
            moved["outputs"] += size[name]
            moved["new_rows"] += size[name] if cache_slot_of(name) else 0
    return moved


def describe_step_bytes(moved: dict[str, int], cache_dtype: str) -> str:
    """static_step_bytes as the export and `edgeinfer verify` print it."""
    return (f"a decode step moves {_size(moved['total'])} across the graph boundary, {_size(moved['cache'])} of it the "
            f"{cache_dtype} KV cache; bound in place, the host copies {_size(moved['new_rows'])} of new rows into its cache "
            f"and allocates no buffers (session.run: {_size(moved['outputs'])} of outputs a step). Without shared memory an "
            "NPU still copies all of it in and out each step")


def _size(n: int) -> str:
    return f"{n / 1e6:.3g} MB" if n >= 1e6 else f"{n / 1e3:.3g} kB" if n >= 1e3 else f"{n} B"
