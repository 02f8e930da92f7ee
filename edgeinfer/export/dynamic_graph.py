"""The CPU/CUDA graph: dynamic shapes and onnxruntime's fastest contrib ops.

One layer is SkipSimplifiedLayerNorm -> MatMulNBits(q|k|v) -> attention -> MatMulNBits(o) ->
SkipSimplifiedLayerNorm -> MatMulNBits(gate|up) -> SiLU * up -> MatMulNBits(down). Fusing q|k|v and gate|up gives two large matmuls instead of five small ones.
Attention (ExportOptions.attention): "gqa", GroupQueryAttention with rotary inside, past and present sharing one
preallocated [1, kvh, context, D] buffer (cuda); or "grouped" (cpu), grouped_attention.py over row-major cache rows.

What the family data (families.py) and the spec add: per-head q/k RMSNorms between the qkv matmul and GQA (q, k, v
then go in separately), a norm on each branch's output before the residual add (Gemma's sandwich), GELU-tanh for
SiLU, and per layer GQA's own rotary table (or none: NoPE layers), sliding window (local_window_size, which counts
the token itself as transformers does) and q.k scale.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import TensorProto
from tqdm import tqdm

from ..architecture import ArchSpec
from ..errors import ExportError
from ..graph_contract import GREEDY_OUTPUT, LOGITS_START, dynamic_io, rotary_tables
from .grouped_attention import GroupedAttention
from .exact_graph import ExactBlockGraph
from .gguf_blocks import ExactBlocks
from .onnx_writer import GraphWriter
from .options import ExportOptions
from .quantize import QuantizedBlocks, quantize_blocks
from .sources import WeightSource
from .weighted_blocks import LinearStatistics, activation_aware_blocks, pack_blocks, round_blocks, search_blocks
from .weight_bits import LAYER_LINEARS, head_bits, weight_bits

MS = "com.microsoft"
EMBEDDING_ROWS = 16384  # table rows per step of the embedding's scale search
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def has_greedy_output(options: ExportOptions) -> bool:
    """GPU packages pick the greedy token on the device; CPU packages keep their graph as it was."""
    return options.target == "cuda"


def cache_layout(options: ExportOptions) -> str:
    """The manifest's kv_cache layout: "BNSH" [1, kv heads, context, head dim] for GroupQueryAttention, "SH"
    [context, kv heads * head dim] rows for grouped attention (the runner binds a prefix of them)."""
    return "SH" if options.attention == "grouped" else "BNSH"


def batch_invariant_matmuls(source: WeightSource, options: ExportOptions) -> bool:
    """Whether every matmul gives a row the same bits whatever rows run beside it, as exact speculation needs: 4-bit
    and 8-bit MatMulNBits in blocks of 16 or 32 with int8 activations (accuracy level 4; bench/batch_invariance.py),
    with a lossless GGUF import's small float matmuls beside them (measured bit-identical on the real Q4_K_M import).
    Larger blocks, and float matmuls, compute a single row with other kernels than several rows."""
    if options.precision != "w4a16" or options.accuracy_level != 4 or options.lm_head_bits == 0:
        return False
    if options.block_size <= 32:
        return True
    head = "model.embed_tokens.weight" if source.spec.tie_word_embeddings else "lm_head.weight"
    return not quantizes_from_floats(source, options) and source_blocks(source, options, [head]) is not None


def with_exact_speculation(source: WeightSource, options: ExportOptions) -> ExportOptions:
    """OPTIONS with exact_speculation decided (see ExportOptions): on for cpu gqa packages whose matmuls are batch
    invariant, unless asked otherwise."""
    if options.exact_speculation is not None:
        return options
    padded = options.target == "cpu" and options.attention == "gqa" and batch_invariant_matmuls(source, options)
    return replace(options, exact_speculation=padded)


def spare_cache_rows(options: ExportOptions) -> int:
    """1 where decode's attention runs with a padding query row (ExportOptions.exact_speculation), else 0.

    MLAS computes attention for one query row with a GEMV kernel and for two or more rows with GEMM kernels that give
    each row the same bits whatever rows run beside it (bench/batch_invariance.py). With a copy of the last row fed
    beside it, a decode step does the same arithmetic as a speculative verify run, so greedy speculation gives plain
    decoding's tokens exactly wherever the matmuls are batch invariant too (MatMulNBits in blocks of 16 or 32, as a
    GGUF import keeps them). The padding row writes its key and value one row past the last token: into the next
    token's row, or the cache's one spare row. GPUs: other kernels, unmeasured, so no padding (ExportOptions refuses
    exact_speculation beyond cpu GroupQueryAttention)."""
    return 1 if options.exact_speculation else 0


def has_logits_start(options: ExportOptions) -> bool:
    """Whether the graph takes logits_start (speculation's verify runs): every graph that returns the last rows only."""
    return not options.all_logits


def source_blocks(source: WeightSource, options: ExportOptions, names: list[str]) -> list[ExactBlocks] | None:
    """The weights in their checkpoint's own blocks (a GGUF's Q4_K, Q6_K...), for a w4a16 export that keeps them;
    None when any of them has no exact form (or --requantize): then all are quantized again from floats.
    CPU only for now: on CUDA the scales would round to float16 and its 8-bit MatMulNBits is unmeasured."""
    if options.precision != "w4a16" or options.requantize or options.target != "cpu":
        return None
    parts = [source.exact_blocks(n) for n in names]
    return None if any(p is None for p in parts) else parts


def quantizes_from_floats(source: WeightSource, options: ExportOptions) -> bool:
    """Whether any layer matmul of a w4a16 export is quantized from floats (what activation-aware calibration is
    for); False when the source's own blocks are kept for all of them (a lossless GGUF import: calibrating would
    add minutes for nothing)."""
    if options.precision != "w4a16":
        return False
    return any(source_blocks(source, options, [f"model.layers.{i}.{linear}.weight"]) is None
               for i in range(source.spec.num_layers) for linear, _ in LAYER_LINEARS)


class DynamicDecoderGraph:
    def __init__(self, writer: GraphWriter, source: WeightSource, options: ExportOptions,
                 statistics: LinearStatistics | None = None):
        self.w = writer
        self.statistics = statistics  # calibration inputs of the 4-bit matmuls: activation-aware 4-bit when given
        self.source = source
        self.spec = source.spec
        self.options = options
        self.dtype = np.dtype(options.activation_dtype)
        self.onnx_type = _ONNX_TYPES[options.activation_dtype]
        # 4-bit matmul node name -> the tensor it reads (what linear_calibration.py taps)
        self.linear_inputs: dict[str, str] = {}
        self.head_initializers: list[str] | None = None  # a tied lm_head's blocks, shared with the embedding
        self.exact = ExactBlockGraph(writer, self.onnx_type, self.dtype, options.accuracy_level)

    # -- weights --------------------------------------------------------------------------------------------
    def _weights(self, names: list[str]) -> np.ndarray:
        return np.concatenate([self.source.tensor(n) for n in names], axis=0)

    def _exact(self, names: list[str]) -> list[ExactBlocks] | None:
        return source_blocks(self.source, self.options, names)

    def linear(self, x: str, name: str, weight_names: list[str], bias_names: list[str] = (), bits: int | None = None) -> str:
        """y = x W^T (+ b): MatMulNBits with BITS-bit weights for w4a16 (None keeps this one in float); the source's
        own blocks where it has exact ones (exact_graph.py)."""
        exact = self._exact(weight_names)
        if exact is not None:
            bias = self._weights(bias_names) if bias_names else None
            return self.exact.linear(x, name, exact, bias)
        bits = weight_bits(self.source, weight_names, self.options) if bits is None else bits
        if bits == 4 and name != "lm_head":  # lm_head reads one row per run in calibration: too few to weigh by
            self.linear_inputs[name] = x
        if name == "lm_head" and self.head_initializers is not None and bits == 8:  # the embedding's table too
            return self.w.node("MatMulNBits", [x, *self.head_initializers], name=name, domain=MS,
                               K=self.spec.hidden_size, N=self.spec.vocab_size, bits=8,
                               block_size=self.options.block_size, accuracy_level=self.options.accuracy_level)[0]
        weight = self._weights(weight_names)  # [N, K]
        bias = self._weights(bias_names).astype(self.dtype) if bias_names else None
        n, k = weight.shape
        if self.options.precision == "w4a16" and bits:
            hessian = self.statistics.hessian(name) if self.statistics is not None and name in self.linear_inputs else None
            if hessian is not None and k % self.options.block_size == 0 and not self.options.symmetric:
                q = activation_aware_blocks(weight, hessian, self.options.block_size, self.options.gptq)
            else:
                q = quantize_blocks(weight, self.options.block_size, self.options.symmetric, bits)
            inputs = [
                x,
                self.w.initializer(f"{name}.qweight", q.packed),
                self.w.initializer(f"{name}.scales", q.scales.astype(self.dtype).reshape(-1)),
                self.w.initializer(f"{name}.qzeros", q.zero_points.reshape(-1)) if q.zero_points is not None else "",
                "",
                self.w.initializer(f"{name}.bias", bias) if bias is not None else "",
            ]
            while inputs[-1] == "":
                inputs.pop()
            return self.w.node(
                "MatMulNBits", inputs, name=name, domain=MS, K=k, N=n, bits=bits,
                block_size=self.options.block_size, accuracy_level=self.options.accuracy_level,
            )[0]
        stored = np.float16 if self.options.precision == "fp16" else self.dtype
        w = self.w.initializer(f"{name}.weight", weight.T.astype(stored))
        if np.dtype(stored) != self.dtype:
            w = self.w.node("Cast", [w], name=f"{name}/cast", to=self.onnx_type)[0]
        y = self.w.node("MatMul", [x, w], name=name)[0]
        if bias is not None:
            y = self.w.node("Add", [y, self.w.initializer(f"{name}.bias", bias)], name=f"{name}/bias")[0]
        return y

    def norm_weight(self, hf_name: str) -> str:
        return self.w.initializer(hf_name, self.source.tensor(hf_name).astype(self.dtype))

    def embedding(self, input_ids: str) -> str:
        exact = self._exact(["model.embed_tokens.weight"]) if self.options.quantize_embeddings else None
        if exact is not None:
            out = self.exact.embedding(input_ids, exact[0])
            if self.spec.embedding_scale != 1:
                scale = self.w.constant("embed.scale_factor", np.float32(self.spec.embedding_scale), dtype=self.dtype)
                out = self.w.node("Mul", [out, scale], name="embed/scale")[0]
            return out
        if self._shares_head_table():
            return self._embedding_from_head(input_ids)
        # Gemma's sqrt(hidden) scale folded into the table (a tied lm_head reads the table unscaled).
        table = self.source.tensor("model.embed_tokens.weight") * np.float32(self.spec.embedding_scale)  # [V, H]
        # GatherBlockQuantized needs whole blocks along the hidden size; otherwise the table stays float.
        block = self.options.embedding_block_size or self.options.block_size
        whole_blocks = table.shape[1] % block == 0
        if self.options.precision == "w4a16" and self.options.quantize_embeddings and whole_blocks:
            q = self._embedding_blocks(table, block)
            inputs = [
                self.w.initializer("embed.qweight", q.packed.reshape(q.packed.shape[0], -1)),
                input_ids,
                self.w.initializer("embed.scales", q.scales.astype(self.dtype)),
            ]
            if q.zero_points is not None:
                inputs.append(self.w.initializer("embed.qzeros", q.zero_points))
            return self.w.node(
                "GatherBlockQuantized", inputs, name="embed", domain=MS,
                bits=4, block_size=block, gather_axis=0, quantize_axis=1,
            )[0]
        stored = np.float16 if self.options.precision == "fp16" else self.dtype
        out = self.w.node("Gather", [self.w.initializer("embed.weight", table.astype(stored)), input_ids], name="embed")[0]
        if np.dtype(stored) != self.dtype:
            out = self.w.node("Cast", [out], name="embed/cast", to=self.onnx_type)[0]
        return out

    def _shares_head_table(self) -> bool:
        """Whether the embedding gathers from the tied lm_head's 8-bit blocks instead of a 4-bit table of its own:
        one copy of the [vocab, hidden] table on disk instead of two (a tied 1.5B such as Qwen2.5-1.5B: -149 MB)
        and 8 bits for the embedding too. (Qwen2.5-Coder's Q4_K_M GGUF stores output.weight apart: untied.)"""
        o = self.options
        return (o.precision == "w4a16" and o.quantize_embeddings and self.spec.tie_word_embeddings
                and head_bits(self.source, o) == 8 and not o.symmetric and self.spec.hidden_size % o.block_size == 0)

    def _head_initializers(self) -> list[str]:
        """lm_head's MatMulNBits B, scales and zero points (8-bit, round to nearest), written once for both users."""
        if self.head_initializers is None:
            q = quantize_blocks(self.source.tensor("model.embed_tokens.weight"), self.options.block_size, False, 8)
            self.head_initializers = [self.w.initializer("lm_head.qweight", q.packed),
                                      self.w.initializer("lm_head.scales", q.scales.astype(self.dtype).reshape(-1)),
                                      self.w.initializer("lm_head.qzeros", q.zero_points.reshape(-1))]
        return self.head_initializers

    def _embedding_from_head(self, input_ids: str) -> str:
        """GatherBlockQuantized over lm_head's B as it lies, [vocab, K / block, block] codes (quantize axis 2)."""
        w, block, hidden = self.w, self.options.block_size, self.spec.hidden_size
        data, scales, zeros = self._head_initializers()
        per_block = w.constant("embed/per_block", [self.spec.vocab_size, hidden // block, 1])
        scales = w.node("Reshape", [scales, per_block], name="embed/scales")[0]
        zeros = w.node("Reshape", [zeros, per_block], name="embed/zeros")[0]
        out = w.node("GatherBlockQuantized", [data, input_ids, scales, zeros], name="embed", domain=MS,
                     bits=8, block_size=block, gather_axis=0, quantize_axis=2)[0]  # [B, S, K / block, block]
        out = w.node("Reshape", [out, w.constant("embed/flat", [0, 0, hidden])], name="embed/flat")[0]
        if self.spec.embedding_scale != 1:
            scale = w.constant("embed.scale_factor", np.float32(self.spec.embedding_scale), dtype=self.dtype)
            out = w.node("Mul", [out, scale], name="embed/scale")[0]
        return out

    def _embedding_blocks(self, table: np.ndarray, block: int):
        """The table's 4-bit blocks. With activation-aware 4-bit (and real weights), each row's scales are searched
        with the squares of layer 0's input-norm gains as the columns' importance: what the first matmuls see of the
        table's error (the unweighted search: 1.6e-3 of layer 0's q|k output, the weighted one 1.2e-3)."""
        if not (self.options.activation_aware and not self.source.random_weights and not self.options.symmetric):
            return quantize_blocks(table, block, self.options.symmetric)
        gains = self.source.tensor(f"model.layers.0.{self.spec.family_data.norms.attention_in}.weight")
        importance = np.square(gains, dtype=np.float32)
        rows = []
        for start in range(0, len(table), EMBEDDING_ROWS):  # bounds the search's temporaries
            part = np.ascontiguousarray(table[start : start + EMBEDDING_ROWS].T, dtype=np.float32)
            scales, zeros = search_blocks(part, importance, block)
            rows.append(pack_blocks(round_blocks(part, scales, zeros), scales, zeros))
        return QuantizedBlocks(np.concatenate([r.packed for r in rows]), np.concatenate([r.scales for r in rows]),
                               np.concatenate([r.zero_points for r in rows]), block, 4)

    # -- graph ----------------------------------------------------------------------------------------------
    def build(self, progress: bool = True) -> None:
        spec, w, t = self.spec, self.w, self.onnx_type
        names = dynamic_io(spec.num_layers, logits_start=has_logits_start(self.options))
        first_past = len(names["inputs"]) - 2 * spec.num_layers
        self.grouped = GroupedAttention(w, spec, t, self.dtype) if self.options.attention == "grouped" else None
        if self.grouped:
            past_shape, self.present_shape = self.grouped.cache_shapes()
        else:
            past_shape = self.present_shape = ["batch_size", spec.num_kv_heads, "max_sequence_length", spec.head_dim]
        input_ids = w.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        self.seqlens_k = w.input("seqlens_k", TensorProto.INT32, ["batch_size"])
        self.total_len = w.input("total_sequence_length", TensorProto.INT32, [])
        logits_start = w.input(LOGITS_START, TensorProto.INT64, [1]) if has_logits_start(self.options) else None
        w.output("logits", t, ["batch_size", "logits_length", spec.vocab_size])
        check_rotary_fits(spec)
        self.padding_row = spare_cache_rows(self.options) == 1
        if self.padding_row:  # GroupQueryAttention counts the padding row: one more token in the cache
            one = w.constant("attn_pad/one", np.int32(1), dtype=np.int32)
            self.seqlens_k = w.node("Add", [self.seqlens_k, one], name="attn_pad/seqlens_k")[0]
            self.total_len = w.node("Add", [self.total_len, one], name="attn_pad/total_sequence_length")[0]
            self.pad_slices = {key: w.constant(f"attn_pad/{key}", [value]) for key, value in
                               (("zero", 0), ("last", -1), ("end", np.iinfo(np.int64).max), ("axis", 1))}
        cos, sin = rotary_tables(spec, self.options.context_length + spare_cache_rows(self.options))
        self.rotary = [(w.initializer(f"rotary.cos.{r}", cos[r].astype(self.dtype)),
                        w.initializer(f"rotary.sin.{r}", sin[r].astype(self.dtype)), 2 * cos.shape[-1]) for r in range(len(cos))]

        norms = spec.family_data.norms
        residual, layer_out = self.embedding(input_ids), None
        for i in tqdm(range(spec.num_layers), desc="layers", unit="layer", disable=not progress, leave=False):
            p = f"model.layers.{i}."
            past = [w.input(names["inputs"][first_past + 2 * i + j], t, past_shape) for j in (0, 1)]
            ln = self.norm_weight(p + f"{norms.attention_in}.weight")
            if layer_out is None:
                normed = self._norm(residual, ln, f"{p}input_norm")
            else:
                normed, residual = self._skip_norm(layer_out, residual, ln, f"{p}input_norm")
            attn = self.attention(normed, i, past)
            o = self.linear(attn, f"{p}o_proj", [p + "self_attn.o_proj.weight"])
            if norms.attention_out:
                o = self._norm(o, self.norm_weight(p + f"{norms.attention_out}.weight"), f"{p}attn_out_norm")
            normed, residual = self._skip_norm(o, residual, self.norm_weight(p + f"{norms.mlp_in}.weight"), f"{p}post_norm")
            layer_out = self.mlp(normed, p)
            if norms.mlp_out:
                layer_out = self._norm(layer_out, self.norm_weight(p + f"{norms.mlp_out}.weight"), f"{p}mlp_out_norm")

        normed, _ = self._skip_norm(layer_out, residual, self.norm_weight("model.norm.weight"), "final_norm")
        if not self.options.all_logits:
            # Logits for the last -LOGITS_START positions only: 1 to sample (skips a [S, vocab] matmul in prefill), k+1
            # to verify k proposed tokens in one run (speculative decoding).
            normed = w.node(
                "Slice", [normed, logits_start, w.constant("last.end", [np.iinfo(np.int64).max]), w.constant("last.axis", [1])],
                name="last_rows",
            )[0]
        head = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
        logits = self.linear(normed, "lm_head", [head], bits=head_bits(self.source, self.options))  # 0: float
        w.node("Identity", [logits], ["logits"], name="logits/identity")
        if has_greedy_output(self.options):
            w.node("ArgMax", [logits], [GREEDY_OUTPUT], name="greedy", axis=-1, keepdims=0)
            w.output(GREEDY_OUTPUT, TensorProto.INT64, ["batch_size", "logits_length"])

    def attention(self, x: str, layer: int, past: list[str]) -> str:
        """q|k|v in one matmul, then GroupQueryAttention (RoPE inside, the cache appended in place) or, for the "SH"
        cache layout, grouped_attention.py's matmuls. Families with q/k norms split q, k and v to normalize each head
        of q and k first; attention then takes them separately."""
        spec, w, p = self.spec, self.w, f"model.layers.{layer}."
        qkv = self.linear(
            x, f"{p}qkv_proj", [p + f"self_attn.{t}_proj.weight" for t in "qkv"],
            [p + f"self_attn.{t}_proj.bias" for t in "qkv"] if spec.qkv_bias else [],
        )
        inputs = [qkv, "", ""]
        if spec.family_data.qk_norm or self.grouped:
            sizes = w.constant(f"{p}qkv/sizes", [spec.q_size, spec.kv_size, spec.kv_size])
            q, k, v = w.node("Split", [qkv, sizes], 3, name=f"{p}qkv/split", axis=-1)
            if spec.family_data.qk_norm:
                q = self._head_norm(q, p + "self_attn.q_norm.weight", f"{p}q_norm")
                k = self._head_norm(k, p + "self_attn.k_norm.weight", f"{p}k_norm")
            inputs = [q, k, v]
        rope, window = spec.layer_rope(layer), spec.layer_window(layer)
        present = [f"present.{layer}.key", f"present.{layer}.value"]
        for name in present:
            w.output(name, self.onnx_type, self.present_shape)
        if self.grouped:
            return self.grouped.build(*inputs, layer, past, present, self.rotary[rope] if rope is not None else None)
        cos, sin = self.rotary[rope][:2] if rope is not None else ("", "")
        if self.padding_row:
            inputs = [self._with_padding_row(x, f"{p}attn_pad/{j}") if x else x for j, x in enumerate(inputs)]
        out = w.node(
            "GroupQueryAttention", [*inputs, *past, self.seqlens_k, self.total_len, cos, sin],
            [f"{p}attn/out", *present], name=f"{p}attn", domain=MS,
            num_heads=spec.num_heads, kv_num_heads=spec.num_kv_heads, do_rotary=int(rope is not None),
            rotary_interleaved=0, scale=spec.query_scale, local_window_size=window or -1,
        )[0]
        if self.padding_row:  # every row but the padding one
            c = self.pad_slices
            out = w.node("Slice", [out, c["zero"], c["last"], c["axis"]], name=f"{p}attn_pad/out")[0]
        return out

    def _with_padding_row(self, x: str, name: str) -> str:
        """X [B, S, D] with its last row repeated: [B, S + 1, D] (spare_cache_rows says why)."""
        w, c = self.w, self.pad_slices
        last = w.node("Slice", [x, c["last"], c["end"], c["axis"]], name=f"{name}/last")[0]
        return w.node("Concat", [x, last], name=f"{name}/concat", axis=1)[0]

    def mlp(self, x: str, p: str) -> str:
        """gate|up in one matmul, act(gate) * up, down."""
        w = self.w
        gate_up = self.linear(x, f"{p}gate_up_proj", [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"])
        gate, up = w.node("Split", [gate_up], 2, name=f"{p}mlp/split", axis=-1, num_outputs=2)
        if self.spec.family_data.activation == "gelu_tanh":
            act = w.node("Gelu", [gate], name=f"{p}mlp/gelu", approximate="tanh")[0]
        else:
            act = w.node("Mul", [gate, w.node("Sigmoid", [gate], name=f"{p}mlp/sigmoid")[0]], name=f"{p}mlp/silu")[0]
        return self.linear(w.node("Mul", [act, up], name=f"{p}mlp/gated")[0], f"{p}down_proj", [p + "mlp.down_proj.weight"])

    def _head_norm(self, x: str, hf_name: str, name: str) -> str:
        """RMSNorm over each head_dim slice of X [B, S, heads * D] (Qwen3 and Gemma 3's q_norm / k_norm)."""
        w, d = self.w, self.spec.head_dim
        heads = w.node("Reshape", [x, w.constant(f"{name}/heads", [0, 0, -1, d])], name=f"{name}/split_heads")[0]
        normed = self._norm(heads, self.norm_weight(hf_name), name)
        return w.node("Reshape", [normed, w.constant(f"{name}/flat", [0, 0, -1])], name=f"{name}/join_heads")[0]

    def _norm(self, x: str, weight: str, name: str) -> str:
        return self.w.node("SimplifiedLayerNormalization", [x, weight], name=name, axis=-1,
                           epsilon=self.spec.rms_norm_eps, stash_type=1)[0]

    def _skip_norm(self, x: str, residual: str, weight: str, name: str) -> tuple[str, str]:
        out = self.w.node(
            "SkipSimplifiedLayerNormalization", [x, residual, weight], [f"{name}/out", "", "", f"{name}/residual"],
            name=name, domain=MS, epsilon=self.spec.rms_norm_eps,
        )
        return out[0], out[3]


def check_rotary_fits(spec: ArchSpec) -> None:
    """GroupQueryAttention rotates inside only heads of a multiple of 16 dims, and whole groups of 16 of them."""
    if any(spec.layer_rope(i) is not None for i in range(spec.num_layers)) and (spec.head_dim % 16 or spec.rotary_dims % 16):
        raise ExportError(
            f"head_dim {spec.head_dim} with {spec.rotary_dims} rotary dims: onnxruntime's GroupQueryAttention needs "
            "multiples of 16 for cpu/cuda packages; export with --target qnn (static graph), which has no such limit"
        )
