"""The QNN graph: static shapes, standard ONNX ops only, the KV cache as plain inputs and outputs.

Two roles share one formulation and differ only in the token count N: `prefill` (N = --prefill-chunk) and
`decode` (N = 1). Every tensor has a fixed shape, so the HTP compiles each graph once:

    inputs   inputs_embeds [1,N,H] (part 0; later parts take hidden_in [1,N,H]), position_cos/position_sin
             [1,R,N,rotary/2] (R: one table per RoPE the layers use), attention_mask [1,M,N,C+N] (additive; M: one
             per attention window), past_key.i/past_value.i [1,KVH,C,D]
    outputs  logits [1,R,V] (last part; the last R rows: R = 1 for decode, min(N, VERIFY_ROWS) for prefill, which
             verifies up to R-1 proposed tokens in one run) or hidden_out [1,N,H], new_key.i/new_value.i [1,KVH,N,D]

The host owns the cache (C slots per layer): it gathers embeddings and rotary rows, builds the mask (past slots
below the write position plus causal new rows), passes the whole cache as past, and writes the new K/V rows back
at the write position. Prompts shorter than N are left-padded so the last real token is always row N-1.

A layer is RMSNorm (Concat eps channel, LpNormalization, Slice, Mul) -> q,k,v MatMul (+bias) -> rotate-half RoPE -> Concat(past,
new) -> attention with the query heads of a kv group folded into rows (no KV repetition, 3-D MatMuls) -> o MatMul
-> RMSNorm -> gate/up MatMul -> SiLU (Sigmoid*x) -> down MatMul. q/k/v and gate/up stay separate matmuls so each
gets its own 16-bit activation range (Qwen2's k bias is much larger than q's or v's). What the family data adds
(families.py): per-head q/k norms before RoPE, norms on the attention and MLP outputs (Gemma), GELU-tanh, partial
rotary (the rest of each head passes through), no RoPE in some layers (SmolLM3), and per layer the rotary table and
mask (sliding window) it reads. 1/sqrt(D) or the family's own q.k scale is folded into q_proj, or into q_norm where
there is one.

W4A16: the float graphs are built first, calibrated on chat-template prompts and quantized to QDQ (see qdq.py);
then the cache inputs and outputs become uint16, so the host keeps the cache as the NPU reads it (quantized_io.py).
Large models are split into parts by layers so that no single HTP context holds more than PART_BYTES of weights.
Prefill and decode of a part read one weights file (share_weight_files). Context buckets: each part also comes
retargeted to smaller contexts (with_context: the cache inputs, the mask and the shape constants change, the
weights file and the quantization stay), so a runner attends over as few slots as its conversation needs.
"""

from __future__ import annotations

import filecmp
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from onnx import TensorProto
from tqdm import tqdm

from .. import __version__
from ..architecture import ArchSpec
from ..errors import ExportError
from ..graph_contract import (ATTENTION_MASK, EMBEDDINGS_FILE, MASK_VALUE, POSITION_COS, POSITION_SIN,
                              describe_step_bytes, rotary_tables, static_io, static_step_bytes)
from .onnx_writer import GraphWriter, WeightsFile
from .options import ExportOptions
from .sources import WeightSource

# Quantization range of the max-subtracted scores: e^-32 * 4096 slots is below 1e-10 of the row's mass, and the
# uint16 step is 5e-4 (the calibrated range of the raw scores would give 0.23 in layer 0 and spend it on -30000).
SHIFTED_RANGE = (-32.0, 1.0)  # +1: the row max is read from a coarser grid and may sit a little below the top
FIXED_RANGES = {"attn/shifted/out": SHIFTED_RANGE, "attn/shifted_masked/out": SHIFTED_RANGE}  # by name suffix
CALIBRATION_CONTEXT = 1024  # the 1.5B at context 4096: calibration 209 s over 4096 slots, 158 s over 1024
PART_BYTES = 1536 * 2**20  # most quantized weight bytes per part (an HTP context stays well under its ~2 GiB limit)


def layer_parts(spec: ArchSpec, precision: str, part_bytes: int = PART_BYTES) -> list[tuple[int, int]]:
    """Layer ranges [start, stop) of each part; the last part also holds the final norm and lm_head."""
    bits = 4 if precision == "w4a16" else 32
    per_layer = spec.hidden_size * (spec.q_size + 2 * spec.kv_size) + spec.q_size * spec.hidden_size
    per_layer = (per_layer + 3 * spec.hidden_size * spec.intermediate_size) * bits // 8
    head = spec.vocab_size * spec.hidden_size * (1 if precision == "w4a16" else 4)  # int8 lm_head in w4a16
    parts, start, used = [], 0, 0
    for layer in range(spec.num_layers):
        if layer > start and used + per_layer > part_bytes:
            parts.append((start, layer))
            start, used = layer, 0
        used += per_layer
    if layer > start and used + head > part_bytes:
        parts.append((start, layer))
        start = layer
    parts.append((start, spec.num_layers))
    return parts


def context_constants(spec: ArchSpec, layers: tuple[int, int], tokens: int, context: int) -> dict[str, list[int]]:
    """The graph's constants that depend on the context (shapes over C + N slots): what the builder writes and
    what with_context rewrites."""
    constants = {"mask/shape": [1, tokens, context + tokens]}
    for i in range(*layers):
        constants[f"model.layers.{i}.attn/kv_shape"] = [spec.num_kv_heads, context + tokens, spec.head_dim]
    return constants


def key_center(bias: np.ndarray, spec: ArchSpec, layer: int, context: int) -> np.ndarray:
    """The mean over positions 0..CONTEXT-1 of LAYER's rotated key bias, [1, KVH, 1, D]: what the graph subtracts from
    every key after RoPE. Scores shift by q.center for every key of a row, which the softmax ignores, so the result
    is the same in exact arithmetic; what changes is the size of the numbers on the way. Qwen2.5's layer-0 key bias
    (norm ~900 in the lowest-frequency pairs, which barely rotate) puts a common ~500-12,000 into every score of a
    row whose differences of a few units decide the softmax: the HTP's 16x16-bit MatMul keeps ~0.1-0.5% of that
    (errors of 4-40 units; the CPU EP's float MatMul 0.1), and a 16-bit grid over it steps 0.24. Centered, the
    keys' norm is ~20 (the idea of SageAttention's K smoothing, fixed from the weights instead of per batch)."""
    b = bias.astype(np.float64).reshape(spec.num_kv_heads, spec.head_dim)
    rope = spec.layer_rope(layer)
    if rope is None:  # a layer without RoPE: its keys' bias is their mean
        return b.reshape(1, spec.num_kv_heads, 1, spec.head_dim).astype(np.float32)
    cos, sin = (t[rope].astype(np.float64).mean(axis=0) for t in rotary_tables(spec, context))
    half = spec.rotary_dims // 2
    x1, x2, rest = b[:, :half], b[:, half : 2 * half], b[:, 2 * half :]  # the rope of StaticDecoderGraph.rope
    center = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return center.reshape(1, spec.num_kv_heads, 1, spec.head_dim).astype(np.float32)


def with_context(model, spec: ArchSpec, part: dict, tokens: int, context: int):
    """MODEL (a part's final graph, quantized or float) retargeted to a cache of CONTEXT slots: the cache inputs, the
    mask and the context_constants change; weights, quantization and names stay, so the graph reads the same file."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    constants = context_constants(spec, tuple(part["layers"]), tokens, context)
    for tensor in model.graph.initializer:
        if tensor.name in constants:
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(constants[tensor.name], dtype=np.int64), tensor.name))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name.startswith("past_"):
            dims[2].dim_value = context
        elif value.name == "attention_mask":
            dims[3].dim_value = context + tokens
    del model.graph.value_info[:]  # shapes inferred for the old context
    return model


def calibration_context(options: ExportOptions) -> int:
    """The context the W4A16 graphs are calibrated and quantized over: the package's, or CALIBRATION_CONTEXT (a whole
    number of prefill chunks) where that is smaller."""
    chunk = options.prefill_chunk
    return min(options.context_length, max(chunk, CALIBRATION_CONTEXT - CALIBRATION_CONTEXT % chunk))


def retarget_parts(folder: Path, graphs: dict, spec: ArchSpec, context: int) -> None:
    """Every part's graph file rewritten in place for CONTEXT (with_context)."""
    import onnx

    for role in ("prefill", "decode"):
        for part in graphs[role]["parts"]:
            path = folder / part["file"]
            model = onnx.load(str(path), load_external_data=False)
            onnx.save(with_context(model, spec, part, graphs[role]["tokens"], context), str(path))


def write_context_buckets(folder: Path, graphs: dict, spec: ArchSpec, buckets: tuple[int, ...]) -> None:
    """For each bucket, a copy of every part's graph retargeted to that context (with_context), named
    <stem>.c<bucket>.onnx beside it and listed in the part's "contexts"; graphs["contexts"] lists them all."""
    import onnx

    for role in ("prefill", "decode"):
        for part in graphs[role]["parts"]:
            model = onnx.load(str(folder / part["file"]), load_external_data=False)
            part["contexts"] = {}
            for bucket in buckets:
                name = f"{Path(part['file']).stem}.c{bucket}.onnx"
                onnx.save(with_context(model, spec, part, graphs[role]["tokens"], bucket), str(folder / name))
                part["contexts"][str(bucket)] = name


@dataclass(frozen=True)
class WeightBlocks:
    """How an openvino w4a16 graph stores its linear weights: MatMulNBits, int4 blocks with float zero points (8 bits,
    with uint8 zero points, for EIGHT_BIT and a LM_HEAD_BITS head), activations in float32. OpenVINO reads MatMulNBits as its
    own compressed-weight MatMul; the QDQ form of the qnn graphs is what it does not follow (README, OpenVINO)."""

    block_size: int
    eight_bit: frozenset[str]  # static-graph weight names (model.layers.N.<proj>.weight) kept at 8 bits
    lm_head_bits: int  # 8, 4, or 0 for float
    accuracy_level: int = 4  # for the CPU EP, which runs these packages as the reference

    def linear(self, w: GraphWriter, source: WeightSource, x: str, name: str, weight_name: str,
               bias_name: str | None, scale: float) -> str:
        from .quantize import quantize_blocks, quantize_blocks_float_zero

        bits = self.lm_head_bits if name == "lm_head" else 8 if f"{name}.weight" in self.eight_bit else 4
        weight = lambda: source.tensor(weight_name) * np.float32(scale)  # noqa: E731  [out, in]
        n, k = source.spec.tensor_shape(weight_name)
        if not bits:
            y = w.node("MatMul", [x, w.shared_initializer(f"{name}.weight", lambda: weight().T)], name=name)[0]
        else:
            made = []  # one quantization gives three initializers; prefill and decode share them (shared_initializer)

            def part(field: str):
                def make():
                    if not made:
                        # 8 bits keep uint8 zero points (half a step of 255 is small): the CPU EP, which runs these
                        # packages as the reference, refuses 8-bit MatMulNBits with float zero points.
                        made.append(quantize_blocks_float_zero(weight(), self.block_size) if bits == 4 else
                                    quantize_blocks(weight(), self.block_size, symmetric=False, bits=bits))
                    return getattr(made[0], field).reshape(-1) if field != "packed" else made[0].packed
                return make

            inputs = [x, w.shared_initializer(f"{name}.qweight", part("packed")),
                      w.shared_initializer(f"{name}.scales", part("scales")),
                      w.shared_initializer(f"{name}.qzeros", part("zero_points"))]
            y = w.node("MatMulNBits", inputs, name=name, domain="com.microsoft", K=k, N=n, bits=bits,
                       block_size=self.block_size, accuracy_level=self.accuracy_level)[0]
        if bias_name:
            bias = w.shared_initializer(f"{name}.bias", lambda: source.tensor(bias_name) * np.float32(scale))
            y = w.node("Add", [y, bias], name=f"{name}/bias")[0]
        return y


class StaticDecoderGraph:
    """One part (a range of layers) of one role (N tokens), in float32."""

    def __init__(self, writer: GraphWriter, source: WeightSource, tokens: int, context: int,
                 layers: tuple[int, int], first: bool, last: bool, center_keys: bool = True,
                 blocks: "WeightBlocks | None" = None, rotate_half: bool = False):
        self.w = writer
        self.blocks = blocks  # openvino w4a16: weights in MatMulNBits blocks; None: float MatMul
        self.rotate_half = rotate_half  # openvino: RoPE in transformers' form (rope_rotate_half)
        self.source = source
        self.spec = source.spec
        self.n = tokens
        self.c = context
        self.layers = layers
        self.first, self.last = first, last
        self.center_keys = center_keys and self.spec.qkv_bias  # key_center: only a bias gives keys a known mean
        self.context_constants = context_constants(self.spec, layers, tokens, context)

    def linear(self, x: str, name: str, weight_name: str, bias_name: str | None = None, scale: float = 1.0) -> str:
        if self.blocks is not None:
            return self.blocks.linear(self.w, self.source, x, name, weight_name, bias_name, scale)
        weight = self.w.shared_initializer(f"{name}.weight", lambda: (self.source.tensor(weight_name) * np.float32(scale)).T)
        y = self.w.node("MatMul", [x, weight], name=name)[0]  # weights stored [in, out]
        if bias_name:
            bias = self.w.shared_initializer(f"{name}.bias", lambda: self.source.tensor(bias_name) * np.float32(scale))
            y = self.w.node("Add", [y, bias], name=f"{name}/bias")[0]
        return y

    def rms_norm(self, x: str, hf_name: str, name: str, lead: tuple[int, ...] | None = None, gain: float = 1.0) -> str:
        """RMSNorm over the last axis of X [*LEAD, width] as LpNormalization (QNN's L2Norm) times sqrt(width) *
        weight: x / ||x|| never forms x^2, whose 16-bit range the first token's massive activations (|x| ~ 1000-2000
        from layer 1 of Qwen2.5 on) take, leaving every other token's mean square on a grid step of ~15 (zero). eps
        stays exact: one extra channel of sqrt(width * eps) goes into the norm and is sliced off after it. LEAD
        defaults to the hidden state's [1, N]; GAIN scales the weight (a folded constant)."""
        w = self.w
        lead = lead or (1, self.n)
        width = self.spec.tensor_shape(hf_name)[0]
        eps = np.full((*lead, 1), np.sqrt(width * self.spec.rms_norm_eps), dtype=np.float32)
        padded = w.node("Concat", [x, w.initializer(f"{name}/eps", eps)], name=f"{name}/with_eps", axis=-1)[0]
        normed = w.node("LpNormalization", [padded], name=f"{name}/l2norm", axis=-1, p=2)[0]
        normed = w.node("Slice", [normed, w.constant(f"{name}/s0", [0]), w.constant(f"{name}/e0", [width]),
                                  w.constant(f"{name}/axis", [len(lead)])], name=f"{name}/drop_eps")[0]
        weight = w.shared_initializer(hf_name, lambda: self.source.tensor(hf_name) * np.float32(np.sqrt(width) * gain))
        return w.node("Mul", [normed, weight], name=f"{name}/scale")[0]

    def head_norm(self, x: str, count: int, hf_name: str, name: str, gain: float = 1.0) -> str:
        """RMSNorm of each head of X [1, N, COUNT * D] (q_norm / k_norm), over rows of a [1, N * COUNT, D] tensor, as
        x / sqrt(mean(x^2) + eps) * weight. Not LpNormalization as for the hidden state: on the HTP simulator QNN's
        L2Norm over head-wide rows parts from the CPU EP (tiny Qwen3, 8 decode steps: logits 0.03-0.10 apart for head
        dims 16-128, against 0.006-0.009 this way; q/k carry no massive activations for x^2 to lose range to)."""
        w, d = self.w, self.spec.head_dim
        rows = w.node("Reshape", [x, w.constant(f"{name}/rows", [1, self.n * count, d])], name=f"{name}/to_rows")[0]
        square = w.node("Mul", [rows, rows], name=f"{name}/square")[0]
        mean = w.node("ReduceMean", [square, w.constant(f"{name}/axes", [-1])], name=f"{name}/mean", keepdims=1)[0]
        eps = w.initializer(f"{name}/eps", np.array([self.spec.rms_norm_eps], dtype=np.float32))
        rms = w.node("Sqrt", [w.node("Add", [mean, eps], name=f"{name}/add_eps")[0]], name=f"{name}/rms")[0]
        normed = w.node("Div", [rows, rms], name=f"{name}/normalize")[0]
        weight = w.shared_initializer(hf_name, lambda: self.source.tensor(hf_name) * np.float32(gain))
        return w.node("Mul", [normed, weight], name=f"{name}/scale")[0]

    def heads(self, x: str, count: int, name: str) -> str:
        """[1,N,count*D] -> [1,count,N,D]"""
        shape = self.w.constant(f"{name}/shape", [1, self.n, count, self.spec.head_dim])
        return self.w.node("Transpose", [self.w.node("Reshape", [x, shape], name=f"{name}/reshape")[0]],
                           name=f"{name}/transpose", perm=[0, 2, 1, 3])[0]

    def rope(self, x: str, rope: int | None, name: str) -> str:
        """Rotate-half RoPE of the first rotary_dims of each head [1,heads,N,D] with the host's cos/sin rows of table
        ROPE (self.rotary); the rest of the head passes through (partial rotary); None: no RoPE (NoPE layers)."""
        if rope is None:
            return x
        w, half, d = self.w, self.spec.rotary_dims // 2, self.spec.head_dim
        cos, sin = self.rotary[rope]
        axis = w.constant(f"{name}/axis", [3])
        x1 = w.node("Slice", [x, w.constant(f"{name}/s0", [0]), w.constant(f"{name}/e0", [half]), axis], name=f"{name}/x1")[0]
        x2 = w.node("Slice", [x, w.constant(f"{name}/s1", [half]), w.constant(f"{name}/e1", [2 * half]), axis], name=f"{name}/x2")[0]
        mul = lambda a, b, tag: w.node("Mul", [a, b], name=f"{name}/{tag}")[0]  # noqa: E731
        if self.rotate_half:
            rotated = [self.rope_rotate_half(x, x1, x2, cos, sin, name)]
        else:
            o1 = w.node("Sub", [mul(x1, cos, "x1c"), mul(x2, sin, "x2s")], name=f"{name}/o1")[0]
            o2 = w.node("Add", [mul(x2, cos, "x2c"), mul(x1, sin, "x1s")], name=f"{name}/o2")[0]
            rotated = [o1, o2]
        if 2 * half < d:
            rotated.append(w.node("Slice", [x, w.constant(f"{name}/s2", [2 * half]), w.constant(f"{name}/e2", [d]), axis],
                                  name=f"{name}/pass")[0])
        return w.node("Concat", rotated, name=f"{name}/concat", axis=3)[0]

    def rope_rotate_half(self, x: str, x1: str, x2: str, cos: str, sin: str, name: str) -> str:
        """The same rotation as x * [cos cos] + [-x2 x1] * [sin sin] (transformers' rotate_half), for OpenVINO: its CPU
        plugin fuses the two-product form above into a RoPE op that comes back wrong from its model cache
        (onnxruntime-ep-openvino 1.8.1: a 9-node probe matches the CPU EP to 1e-7 when compiled, parts by 30 when
        loaded from the cache; this form matches both times)."""
        w, half, d = self.w, self.spec.rotary_dims // 2, self.spec.head_dim
        if 2 * half < d:  # partial rotary: only the first 2*half dims turn
            x = w.node("Slice", [x, w.constant(f"{name}/s3", [0]), w.constant(f"{name}/e3", [2 * half]),
                                 w.constant(f"{name}/axis3", [3])], name=f"{name}/turning")[0]
        minus_x2 = w.node("Neg", [x2], name=f"{name}/neg_x2")[0]
        turned = w.node("Concat", [minus_x2, x1], name=f"{name}/rotate_half", axis=3)[0]
        cos2 = w.node("Concat", [cos, cos], name=f"{name}/cos2", axis=3)[0]
        sin2 = w.node("Concat", [sin, sin], name=f"{name}/sin2", axis=3)[0]
        return w.node("Add", [w.node("Mul", [x, cos2], name=f"{name}/x_cos")[0], w.node("Mul", [turned, sin2], name=f"{name}/turned_sin")[0]],
                      name=f"{name}/rotated")[0]

    def host_rows(self, input_name: str, count: int, tag: str) -> list[str]:
        """One [1,1,N,*] row set per table of a host input [1,COUNT,N,*] (rotary tables, masks); the input itself when
        there is one."""
        if count == 1:
            return [input_name]
        w, axis = self.w, self.w.constant(f"{tag}/axis", [1])
        return [w.node("Slice", [input_name, w.constant(f"{tag}/s{k}", [k]), w.constant(f"{tag}/e{k}", [k + 1]), axis],
                       name=f"{tag}/{k}")[0] for k in range(count)]

    def attention(self, q: str, k: str, v: str, past_k: str, past_v: str, mask: str, name: str) -> str:
        """Query heads of one kv group folded into rows: [KVH, G*N, D] x [KVH, D, C+N]; no KV repetition."""
        s, w, n = self.spec, self.w, self.n
        g, d = s.num_heads // s.num_kv_heads, s.head_dim
        keys = w.node("Concat", [past_k, k], name=f"{name}/keys", axis=2)[0]
        values = w.node("Concat", [past_v, v], name=f"{name}/values", axis=2)[0]
        kv_shape = w.constant(f"{name}/kv_shape", self.context_constants[f"{name}/kv_shape"])
        keys = w.node("Reshape", [keys, kv_shape], name=f"{name}/keys3")[0]
        values = w.node("Reshape", [values, kv_shape], name=f"{name}/values3")[0]
        q = w.node("Reshape", [q, w.constant(f"{name}/q_shape", [s.num_kv_heads, g * n, d])], name=f"{name}/q3")[0]
        keys_t = w.node("Transpose", [keys], name=f"{name}/keys_t", perm=[0, 2, 1])[0]
        scores = w.node("MatMul", [q, keys_t], name=f"{name}/scores")[0]  # 1/sqrt(D) is folded into q_proj
        masked = w.node("Add", [scores, mask], name=f"{name}/mask")[0]
        top = w.node("ReduceMax", [masked, w.constant(f"{name}/max_axes", [-1])], name=f"{name}/row_max", keepdims=1)[0]
        shifted = w.node("Sub", [scores, top], name=f"{name}/shifted")[0]
        shifted = w.node("Add", [shifted, mask], name=f"{name}/shifted_masked")[0]
        probs = w.node("Softmax", [shifted], name=f"{name}/softmax", axis=-1)[0]
        out = w.node("MatMul", [probs, values], name=f"{name}/context")[0]  # [KVH, G*N, D]
        out = w.node("Reshape", [out, w.constant(f"{name}/o_shape", [1, s.num_heads, n, d])], name=f"{name}/o4")[0]
        out = w.node("Transpose", [out], name=f"{name}/o_t", perm=[0, 2, 1, 3])[0]
        return w.node("Reshape", [out, w.constant(f"{name}/o_flat", [1, n, s.q_size])], name=f"{name}/o_flat")[0]

    def mlp(self, h: str, p: str) -> str:
        """gate and up as separate matmuls (each its own 16-bit range), act(gate) * up, down."""
        w = self.w
        gate = self.linear(h, f"{p}gate_proj", p + "mlp.gate_proj.weight")
        up = self.linear(h, f"{p}up_proj", p + "mlp.up_proj.weight")
        if self.spec.family_data.activation == "gelu_tanh":
            act = w.node("Gelu", [gate], name=f"{p}mlp/gelu", approximate="tanh")[0]
        else:
            act = w.node("Mul", [gate, w.node("Sigmoid", [gate], name=f"{p}mlp/sigmoid")[0]], name=f"{p}mlp/silu")[0]
        return self.linear(w.node("Mul", [act, up], name=f"{p}mlp/gated")[0], f"{p}down_proj", p + "mlp.down_proj.weight")

    def build(self) -> None:
        s, w, n, c = self.spec, self.w, self.n, self.c
        family = s.family_data
        f32 = TensorProto.FLOAT
        io = static_io(self.layers, self.first, self.last)
        x = w.input(io["inputs"][0], f32, [1, n, s.hidden_size])
        ropes, windows = len(s.ropes()), len(s.windows())
        for name in (POSITION_COS, POSITION_SIN):
            w.input(name, f32, [1, ropes, n, s.rotary_dims // 2])
        w.input(ATTENTION_MASK, f32, [1, windows, n, c + n])
        self.rotary = list(zip(self.host_rows(POSITION_COS, ropes, "cos"), self.host_rows(POSITION_SIN, ropes, "sin")))
        groups = s.num_heads // s.num_kv_heads
        # The mask row of token t serves every query head of a group: [1,1,N,C+N] -> [1, G*N, C+N], per window.
        masks = []
        for k, rows in enumerate(self.host_rows(ATTENTION_MASK, windows, "mask")):
            mask = w.node("Reshape", [rows, w.constant("mask/shape", self.context_constants["mask/shape"])],
                          name=f"mask/reshape{k or ''}")[0]
            masks.append(w.node("Tile", [mask, w.constant("mask/repeats", [1, groups, 1])], name=f"mask/tile{k or ''}")[0])
        kv_shape = [1, s.num_kv_heads, c, s.head_dim]
        new_shape = [1, s.num_kv_heads, n, s.head_dim]
        norms = family.norms
        for i in range(*self.layers):
            p = f"model.layers.{i}."
            past_k, past_v = w.input(f"past_key.{i}", f32, kv_shape), w.input(f"past_value.{i}", f32, kv_shape)
            h = self.rms_norm(x, p + f"{norms.attention_in}.weight", f"{p}input_norm")
            bias = (lambda t: p + f"self_attn.{t}_proj.bias") if s.qkv_bias else (lambda t: None)
            # q.k's scale is folded into q: into its per-head norm where there is one (the norm would undo it in q_proj)
            q_scale = 1.0 if family.qk_norm else s.query_scale
            q = self.linear(h, f"{p}q_proj", p + "self_attn.q_proj.weight", bias("q"), scale=q_scale)
            k = self.linear(h, f"{p}k_proj", p + "self_attn.k_proj.weight", bias("k"))
            v = self.linear(h, f"{p}v_proj", p + "self_attn.v_proj.weight", bias("v"))
            if family.qk_norm:  # over each head's D values: rows of [1, N * heads, D]
                q = self.head_norm(q, s.num_heads, p + "self_attn.q_norm.weight", f"{p}q_norm", gain=s.query_scale)
                k = self.head_norm(k, s.num_kv_heads, p + "self_attn.k_norm.weight", f"{p}k_norm")
            q, k = self.heads(q, s.num_heads, f"{p}q"), self.heads(k, s.num_kv_heads, f"{p}k")
            q = self.rope(q, s.layer_rope(i), f"{p}q_rope")
            k = self.rope(k, s.layer_rope(i), f"{p}k_rope")
            if self.center_keys:  # the cache holds keys minus their bias's mean
                center = w.shared_initializer(f"{p}k_center", lambda: key_center(self.source.tensor(bias("k")), s, i, c))
                k = w.node("Sub", [k, center], name=f"{p}k_center")[0]
            v = self.heads(v, s.num_kv_heads, f"{p}v")
            new_k = w.node("Identity", [k], [f"new_key.{i}"], name=f"{p}new_key")[0]
            new_v = w.node("Identity", [v], [f"new_value.{i}"], name=f"{p}new_value")[0]
            w.output(new_k, f32, new_shape)
            w.output(new_v, f32, new_shape)
            attn = self.attention(q, new_k, new_v, past_k, past_v, masks[s.layer_mask(i)], f"{p}attn")
            o = self.linear(attn, f"{p}o_proj", p + "self_attn.o_proj.weight")
            if norms.attention_out:
                o = self.rms_norm(o, p + f"{norms.attention_out}.weight", f"{p}attn_out_norm")
            x = w.node("Add", [x, o], name=f"{p}attn_residual")[0]
            h = self.rms_norm(x, p + f"{norms.mlp_in}.weight", f"{p}post_norm")
            down = self.mlp(h, p)
            if norms.mlp_out:
                down = self.rms_norm(down, p + f"{norms.mlp_out}.weight", f"{p}mlp_out_norm")
            x = w.node("Add", [x, down], name=f"{p}mlp_residual")[0]
        if not self.last:
            w.node("Identity", [x], ["hidden_out"], name="hidden_out/identity")
            w.output("hidden_out", f32, [1, n, s.hidden_size])
            return
        rows = logits_rows_of(n)
        if rows < n:  # prompts are left-padded: the last real tokens are always the last rows
            x = w.node("Slice", [x, w.constant("last/start", [n - rows]), w.constant("last/end", [n]), w.constant("last/axis", [1])],
                       name="last_rows")[0]
        x = self.rms_norm(x, "model.norm.weight", "final_norm", lead=(1, rows))
        head = "model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight"
        logits = self.linear(x, "lm_head", head)
        w.node("Identity", [logits], ["logits"], name="logits/identity")
        w.output("logits", f32, [1, rows, s.vocab_size])


# Rows of the prefill graph that return logits: the pending token and up to 7 proposed ones, verified in one prefill
# run (speculative decoding); the lm_head then reads 8 rows instead of 1 in each prompt chunk.
VERIFY_ROWS = 8


def logits_rows_of(tokens: int) -> int:
    return min(tokens, VERIFY_ROWS)


def write_float_graphs(weights: WeightSource, options: ExportOptions, folder: Path, parts: list[tuple[int, int]],
                       progress: bool, blocks: WeightBlocks | None = None) -> dict:
    """Float32 prefill and decode graphs of each part over one weights file (each weight read from the source and
    written once); returns the manifest's role entries."""
    roles = {"prefill": options.prefill_chunk, "decode": 1}
    graphs = {role: {"tokens": tokens, "logits_rows": logits_rows_of(tokens), "parts": []} for role, tokens in roles.items()}
    for k in tqdm(range(len(parts)), desc="graphs", unit="part", disable=not progress, leave=False):
        layers, first, last = parts[k], k == 0, k == len(parts) - 1
        stems = {role: f"{role}.part{k}" if len(parts) > 1 else role for role in roles}
        data = WeightsFile(folder / f"{stems['prefill']}.onnx.data")
        try:
            for role, tokens in roles.items():
                writer = GraphWriter(data)
                StaticDecoderGraph(writer, weights, tokens, options.context_length, layers, first, last,
                                   options.center_keys, blocks, rotate_half=options.target == "openvino").build()
                writer.save(folder / f"{stems[role]}.onnx", producer=f"edgeinfer {__version__}")
                entry = {"file": f"{stems[role]}.onnx", "data": data.path.name, "layers": list(layers),
                         **static_io(layers, first, last)}
                graphs[role]["parts"].append(entry)
        finally:
            data.close()
    return graphs


def share_weight_files(folder: Path, graphs: dict) -> None:
    """Prefill and decode of a part hold the same weights, written (or quantized) in the same order: where their
    data files are byte-identical, the decode graph is pointed at the prefill's file and its own copy removed,
    so the package carries each weight once (ONNX-level sharing; each QNN context still holds its own copy)."""
    import onnx

    for prefill, decode in zip(graphs["prefill"]["parts"], graphs["decode"]["parts"]):
        if prefill["data"] == decode["data"] or not filecmp.cmp(folder / prefill["data"], folder / decode["data"], shallow=False):
            continue
        model = onnx.load(str(folder / decode["file"]), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = prefill["data"]
        onnx.save(model, str(folder / decode["file"]))
        (folder / decode["data"]).unlink()
        decode["data"] = prefill["data"]


def build_static_graphs(weights: WeightSource, options: ExportOptions, folder: Path, progress: bool = True,
                        part_bytes: int | None = None) -> dict:
    """Write the qnn package's graphs into FOLDER; returns the manifest's `graphs` (plus "kv_dtype")."""
    if options.precision not in ("w4a16", "fp32"):
        raise ExportError(f"precision {options.precision} is not offered for {options.target}: use w4a16 (the NPU's) or fp32")
    if options.prefill_chunk < 2 or options.prefill_chunk > options.context_length:
        raise ExportError(f"prefill chunk {options.prefill_chunk} must be between 2 and the context {options.context_length}")
    if options.precision == "w4a16":
        from .weight_bits import eight_bit_graph_weights

        eight_bit = eight_bit_graph_weights(weights, options)  # asked of the source itself (GGUF: how it stored each)
    blocks = None
    if options.target == "openvino" and options.precision == "w4a16":
        blocks = WeightBlocks(options.block_size, frozenset(eight_bit), 8 if options.lm_head_bits is None else options.lm_head_bits,
                              options.accuracy_level)
    # A sandwich norm (Gemma) leaves no matmul to fold its gain into: those families keep their residual stream.
    # Only for the QDQ graphs (qnn): the rotation spreads the massive channels that 16-bit activations cannot hold.
    rotate = options.target == "qnn" and options.precision == "w4a16" and options.rotate and weights.spec.family_data.rotatable
    if rotate:
        from .rotation import RotatedResidual

        weights = RotatedResidual(weights)  # the same function; the quantizer sees no massive channels
    spec = weights.spec
    parts = layer_parts(spec, options.precision, part_bytes or PART_BYTES)
    # Embeddings stay on the host (a gather from a memory-mapped table): the table is the largest tensor and a
    # gather is no work for an NPU; fp16 halves it at no measurable cost (fp32 packages keep fp32).
    table_dtype = np.float16 if options.precision == "w4a16" else np.float32
    table = weights.tensor("model.embed_tokens.weight") * np.float32(spec.embedding_scale)  # Gemma's sqrt(hidden)
    np.save(folder / EMBEDDINGS_FILE, table.astype(table_dtype))
    del table
    host = {
        "embeddings": {"file": EMBEDDINGS_FILE, "dtype": np.dtype(table_dtype).name, "where": "host (gather)"},
        "rotary": "host (cos/sin rows gathered per position)",
        "attention_mask": {"where": "host", "value": MASK_VALUE},
    }
    contexts = [*options.context_buckets, options.context_length]
    if options.precision == "fp32" or blocks is not None:
        graphs = write_float_graphs(weights, options, folder, parts, progress, blocks)
        share_weight_files(folder, graphs)
        write_context_buckets(folder, graphs, spec, options.context_buckets)
        report_step_bytes(graphs, host, spec, options.context_length, progress)
        quantization = None if blocks is None else {
            "weights": "MatMulNBits, float zero points", "block_size": blocks.block_size, "lm_head_bits": blocks.lm_head_bits,
            "eight_bit": len(blocks.eight_bit), "activations": "float32", "rotation": None}
        return {**graphs, "contexts": contexts, "host": host, "quantization": quantization, "kv_dtype": "float32"}

    from .qdq import quantize_graphs
    from .quantized_io import uint16_cache_io

    started = time.perf_counter()
    # Built, calibrated and quantized over a context of at most CALIBRATION_CONTEXT (the calibration texts fit in it;
    # attention over more empty slots only costs time), then retargeted to the package's context (with_context).
    built = replace(options, context_length=calibration_context(options), context_buckets=())
    with tempfile.TemporaryDirectory(dir=folder, prefix=".float-") as tmp:
        float_folder = Path(tmp)
        graphs = write_float_graphs(weights, built, float_folder, parts, progress)
        quantization = quantize_graphs(weights, graphs, float_folder, folder, built, progress, FIXED_RANGES, eight_bit)
        shutil.rmtree(float_folder, ignore_errors=True)
    host["kv_cache"] = uint16_cache_io(folder, graphs, spec.num_layers)  # the host keeps the cache as the graphs read it
    share_weight_files(folder, graphs)
    if built.context_length != options.context_length:
        retarget_parts(folder, graphs, spec, options.context_length)
    write_context_buckets(folder, graphs, spec, options.context_buckets)
    if progress:
        print(f"quantized {len(parts)} part(s) x 2 graphs to W4A16 QDQ in {time.perf_counter() - started:.1f} s")
    report_step_bytes(graphs, host, spec, options.context_length, progress)
    if rotate:  # what `edgeinfer verify` needs to compare hidden states with an unrotated reference
        from ..hadamard import KIND, SEED

        quantization["rotation"] = {"of": "residual stream", "kind": KIND, "seed": SEED, "size": spec.hidden_size}
    else:
        quantization["rotation"] = None
    return {**graphs, "contexts": contexts, "host": host, "quantization": quantization, "kv_dtype": host["kv_cache"]["dtype"]}


def report_step_bytes(graphs: dict, host: dict, spec: ArchSpec, context: int, progress: bool) -> None:
    """What one decode step feeds and reads back: the KV cache is nearly all of it at long contexts."""
    if progress:
        dtype = host["kv_cache"]["dtype"] if "kv_cache" in host else "float32"
        print(describe_step_bytes(static_step_bytes({**graphs, "host": host}, spec, context), dtype))
