"""CPU attention over a row-major cache prefix: each kv head's key rows are read once per step.

onnxruntime's CPU GroupQueryAttention runs one matrix-vector product per query head, so a kv head's keys and values
are read once for every query head of its group (6 times on Qwen2.5-1.5B), the keys through a packing copy; at 4064
cached tokens its fp32 cache ran at a few GB/s and attention took about half of a decode step (bench/decode_depth.py).

Here the cache of one layer and kind is a [context, kv_heads * head_dim] row-major buffer ("SH" layout). The runner
binds its first P rows (the tokens already held) as the past input and the next S rows as the present output, so the
graph reads a contiguous prefix and writes only the new rows, in place. Scores come from one matmul of the whole
prefix against a block-diagonal matrix of the queries:

    B[g*D + d, s*H + h] = scale * q[s, h, d]   where head h reads kv head g (h // group == g), else 0
    scores[s*H + h, p]  = (keys[p, :] @ B)[s*H + h]        # [P, kvh*D] @ [kvh*D, S*H]: keys read once
    out[s, h, :]        = (probs[s, h, :] @ values)[g*D : (g+1)*D]

which does kv_heads times the multiply-adds a per-head product needs, on the few columns of one decode step (12 of
them for 12 heads): nothing, next to reading the cache once instead of once per query head. The new rows' own keys
and values join the past ones through a second, small product, so the cache is never concatenated or copied.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from ..architecture import ArchSpec
from ..graph_contract import INPUT_IDS, past_name
from .onnx_writer import GraphWriter

MS = "com.microsoft"
NEG_INF = np.float32(-np.inf)


class GroupedAttention:
    """Builds each layer's attention for the "SH" cache layout; the per-step tensors all layers share (the past
    length, the masks) are made once, on first use."""

    def __init__(self, writer: GraphWriter, spec: ArchSpec, onnx_type: int, dtype: np.dtype):
        self.w, self.spec, self.onnx_type, self.dtype = writer, spec, onnx_type, dtype
        self._shared: dict[str, str] = {}  # per-step tensors every layer reads, by name
        self._masks: dict[int | None, str] = {}
        group = spec.num_heads // spec.num_kv_heads
        heads, kv_heads, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
        owner = np.arange(heads) // group  # the kv head each query head reads
        # [kvh, 1, H, 1]: keeps q[., h, :] in the block of h's kv head, scaled by the family's q.k scale.
        block = (np.arange(kv_heads)[:, None] == owner[None, :]).astype(dtype)  # [kvh, H]
        self.query_block = writer.initializer("attn.query_block", block[:, None, :, None] * dtype.type(spec.query_scale))
        # Output columns: head h's own kv head's slice of the [H, kvh*D] products, as flat indices of one row.
        own = (np.arange(heads)[:, None] * kv_heads + owner[:, None]) * d + np.arange(d)[None, :]
        self.own_columns = writer.initializer("attn.own_columns", own.reshape(-1).astype(np.int64))

    def cache_shapes(self) -> tuple[list, list]:
        """Shapes of a layer's past input (the P rows held) and present output (the S new rows)."""
        return ["past_sequence_length", self.spec.kv_size], ["sequence_length", self.spec.kv_size]

    def build(self, q: str, k: str, v: str, layer: int, past: list[str], present: list[str], rotary) -> str:
        """Attention of Q [1, S, H*D] over the past rows and K, V [1, S, kvh*D]; writes PRESENT (the new rows,
        rotated) and returns the output [1, S, H*D]. ROTARY: (cos, sin) tables, or None for a layer without RoPE."""
        w, spec, p = self.w, self.spec, f"model.layers.{layer}.attn"
        heads, kv_heads, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
        if rotary is not None:
            q, k = (self._rotate(x, n, rotary, f"{p}/rotary_{kind}") for x, n, kind in ((q, heads, "q"), (k, kv_heads, "k")))
        rows = w.constant(f"{p}/rows_shape", [-1, spec.kv_size])
        k_new = w.node("Reshape", [k, rows], [present[0]], name=f"{p}/new_keys")[0]  # [S, kvh*D]
        v_new = w.node("Reshape", [v, rows], [present[1]], name=f"{p}/new_values")[0]

        # Per-step tensors every layer shares, made here in the outer graph (a branch's own nodes are its alone).
        window = spec.layer_window(layer)
        shared = [self._mask(window), self._split_sizes(), self._per_query_shape(), self._one_token(),
                  self._by_query_shape(), self._flat_probs_shape()]
        one = self._branch(f"{p}/one_token", lambda: self._few_queries(q, k_new, v_new, past, layer, shared[0]))
        many = self._branch(f"{p}/many_tokens", lambda: self._many_queries(q, k_new, v_new, past, layer, shared[0]))
        return w.node("If", [shared[3]], name=f"{p}/path", then_branch=one, else_branch=many)[0]

    def _few_queries(self, q: str, k_new: str, v_new: str, past: list[str], layer: int, mask: str) -> str:
        """Decode: the queries as the columns of one block-diagonal matrix, so each kv head's rows are read once."""
        w, spec, p = self.w, self.spec, f"model.layers.{layer}.attn"
        heads, d = spec.num_heads, spec.head_dim
        # B [kvh*D, S*H]: each query head's column, in its kv head's rows only.
        q_heads = w.node("Reshape", [q, w.constant(f"{p}/q_heads", [-1, heads, d])], name=f"{p}/q_heads")[0]  # [S, H, D]
        spread = w.node("Mul", [q_heads, self.query_block], name=f"{p}/q_spread")[0]  # [kvh, S, H, D]
        columns = w.node("Transpose", [spread], name=f"{p}/q_columns", perm=[0, 3, 1, 2])[0]  # [kvh, D, S, H]
        block = w.node("Reshape", [columns, w.constant(f"{p}/block", [spec.kv_size, -1])], name=f"{p}/block")[0]

        # Scores of every (query, head) row against the past rows, then the new ones: [S*H, P + S].
        past_scores = w.node("MatMul", [past[0], block], name=f"{p}/past_scores")[0]  # [P, S*H]
        new_scores = w.node("MatMul", [k_new, block], name=f"{p}/new_scores")[0]  # [S, S*H]
        scores = w.node("Concat", [w.node("Transpose", [past_scores], name=f"{p}/past_scores_t", perm=[1, 0])[0],
                                   w.node("Transpose", [new_scores], name=f"{p}/new_scores_t", perm=[1, 0])[0]],
                        name=f"{p}/scores", axis=1)[0]
        per_query = w.node("Reshape", [scores, self._per_query_shape()], name=f"{p}/per_query")[0]  # [S, H, P + S]
        if spec.layer_window(layer) is not None:  # one query sees every earlier key: only a window hides some
            per_query = w.node("Add", [per_query, mask], name=f"{p}/masked")[0]
        probs = w.node("Softmax", [per_query], name=f"{p}/softmax", axis=-1)[0]
        past_probs, new_probs = w.node("Split", [probs, self._split_sizes()], 2, name=f"{p}/probs", axis=-1)

        mixed = w.node("Add", [w.node("MatMul", [past_probs, past[1]], name=f"{p}/past_values")[0],
                               w.node("MatMul", [new_probs, v_new], name=f"{p}/new_values_mix")[0]],
                       name=f"{p}/mixed")[0]  # [S, H, kvh*D]
        rows = w.node("Reshape", [mixed, w.constant(f"{p}/mixed_rows", [1, -1, heads * spec.kv_size])], name=f"{p}/mixed_rows")[0]
        return w.node("Gather", [rows, self.own_columns], name=f"{p}/out", axis=2)[0]  # [1, S, H*D]

    def _many_queries(self, q: str, k_new: str, v_new: str, past: list[str], layer: int, mask: str) -> str:
        """Prefill: kv heads as a batch of plain matmuls over the past and new rows joined (one copy of the cache
        per layer, small next to S queries' work; the block-diagonal form would double the multiply-adds and its
        [P, S*H] scores would pass through memory several times)."""
        w, spec, p = self.w, self.spec, f"model.layers.{layer}.attn_many"
        heads, kv_heads, d, group = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.num_heads // spec.num_kv_heads
        q4 = w.node("Reshape", [q, w.constant(f"{p}/q4", [-1, kv_heads, group, d])], name=f"{p}/q4")[0]  # [S, kvh, G, D]
        q_by_kv = w.node("Transpose", [q4], name=f"{p}/q_by_kv", perm=[1, 0, 2, 3])[0]  # [kvh, S, G, D]
        q_scaled = w.node("Mul", [q_by_kv, w.initializer(f"{p}/scale", np.array(spec.query_scale, dtype=self.dtype))],
                          name=f"{p}/q_scaled")[0]
        q3 = w.node("Reshape", [q_scaled, w.constant(f"{p}/q3", [kv_heads, -1, d])], name=f"{p}/q3")[0]  # [kvh, S*G, D]
        per_head = w.constant(f"{p}/per_head", [-1, kv_heads, d])
        keys = w.node("Concat", [past[0], k_new], name=f"{p}/keys", axis=0)[0]  # [P + S, kvh*D]
        keys_t = w.node("Transpose", [w.node("Reshape", [keys, per_head], name=f"{p}/keys3")[0]], name=f"{p}/keys_t",
                        perm=[1, 2, 0])[0]  # [kvh, D, P + S]
        values = w.node("Concat", [past[1], v_new], name=f"{p}/values", axis=0)[0]
        values_t = w.node("Transpose", [w.node("Reshape", [values, per_head], name=f"{p}/values3")[0]], name=f"{p}/values_t",
                          perm=[1, 0, 2])[0]  # [kvh, P + S, D]
        scores = w.node("MatMul", [q3, keys_t], name=f"{p}/scores")[0]  # [kvh, S*G, P + S]
        by_query = w.node("Reshape", [scores, self._by_query_shape()], name=f"{p}/by_query")[0]  # [kvh, S, G, P + S]
        probs = w.node("Softmax", [w.node("Add", [by_query, mask], name=f"{p}/masked")[0]], name=f"{p}/softmax", axis=-1)[0]
        flat = w.node("Reshape", [probs, self._flat_probs_shape()], name=f"{p}/flat")[0]  # [kvh, S*G, P + S]
        out = w.node("MatMul", [flat, values_t], name=f"{p}/mixed")[0]  # [kvh, S*G, D]
        out4 = w.node("Reshape", [out, w.constant(f"{p}/out4", [kv_heads, -1, group, d])], name=f"{p}/out4")[0]
        back = w.node("Transpose", [out4], name=f"{p}/by_token", perm=[1, 0, 2, 3])[0]  # [S, kvh, G, D]
        return w.node("Reshape", [back, w.constant(f"{p}/out", [1, -1, spec.q_size])], name=f"{p}/out")[0]

    def _branch(self, name: str, build) -> "onnx.GraphProto":
        """BUILD's nodes as an If branch with one output (what BUILD returns); its constants stay in the outer graph."""
        outer, self.w.nodes = self.w.nodes, []
        try:
            result = build()
            nodes = self.w.nodes
        finally:
            self.w.nodes = outer
        out = f"{name}/result"
        nodes.append(helper.make_node("Identity", [result], [out], name=f"{name}/result"))
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, self.onnx_type, None)])

    def _rotate(self, x: str, num_heads: int, rotary, name: str) -> str:
        cos, sin, dims = rotary
        return self.w.node("RotaryEmbedding", [x, self._past(), cos, sin], name=name, domain=MS,
                           interleaved=0, num_heads=num_heads, rotary_embedding_dim=dims)[0]

    # -- shared by every layer ------------------------------------------------------------------------------
    def _once(self, name: str, make) -> str:
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]

    def _past(self) -> str:
        """P, the rows the cache holds before this run, as int64 [1] (RotaryEmbedding's position offset)."""
        return self._once("past", lambda: self.w.node(
            "Shape", [past_name(0, "key")], name="attn/past_length", start=0, end=1)[0])

    def _new_length(self) -> str:
        """S, the tokens of this run, as int64 [1]."""
        return self._once("new", lambda: self.w.node("Shape", [INPUT_IDS], name="attn/new_length", start=1, end=2)[0])

    def _split_sizes(self) -> str:
        return self._once("split", lambda: self.w.node(
            "Concat", [self._past(), self._new_length()], name="attn/split_sizes", axis=0)[0])

    def _one_token(self) -> str:
        """True when this run feeds one token (decode): the block-diagonal path."""
        w = self.w
        return self._once("one", lambda: w.node("Equal", [self._new_length(), w.constant("attn/one", [1])], name="attn/one_token")[0])

    def _by_query_shape(self) -> str:
        """[kvh, S, G, -1]: the prefill path's scores regrouped by query."""
        w, spec = self.w, self.spec
        return self._once("by_query", lambda: w.node(
            "Concat", [w.constant("attn/kvh", [spec.num_kv_heads]), self._new_length(),
                       w.constant("attn/group_rest", [spec.num_heads // spec.num_kv_heads, -1])],
            name="attn/by_query_shape", axis=0)[0])

    def _flat_probs_shape(self) -> str:
        w = self.w
        return self._once("flat_probs", lambda: w.node(
            "Concat", [w.constant("attn/kvh_rest", [self.spec.num_kv_heads, -1]), self._total_length()],
            name="attn/flat_probs_shape", axis=0)[0])

    def _total_length(self) -> str:
        return self._once("total", lambda: self.w.node("Add", [self._past(), self._new_length()], name="attn/total_length")[0])

    def _per_query_shape(self) -> str:
        """[S, H, -1]: the scores' rows regrouped by query."""
        w = self.w
        return self._once("per_query", lambda: w.node(
            "Concat", [self._new_length(), w.constant("attn/heads", [self.spec.num_heads, -1])],
            name="attn/per_query_shape", axis=0)[0])

    def _mask(self, window: int | None) -> str:
        """[S, 1, P + S] additive mask: -inf where key position > query position (causal) or, with a WINDOW, where
        the key lies WINDOW or more tokens back (the static graph's and transformers' sliding window)."""
        if window in self._masks:
            return self._masks[window]
        w, tag = self.w, f"attn/mask_{window or 'full'}"
        zero, one = w.constant(f"{tag}/zero", 0), w.constant(f"{tag}/one", 1)
        past = w.node("Squeeze", [self._past(), w.constant(f"{tag}/axis0", [0])], name=f"{tag}/past")[0]
        new = w.node("Squeeze", [self._new_length(), w.constant(f"{tag}/axis0b", [0])], name=f"{tag}/new")[0]
        total = w.node("Add", [past, new], name=f"{tag}/total")[0]
        queries = w.node("Add", [w.node("Range", [zero, new, one], name=f"{tag}/query_range")[0], past], name=f"{tag}/queries")[0]
        keys = w.node("Range", [zero, total, one], name=f"{tag}/keys")[0]
        q_col = w.node("Unsqueeze", [queries, w.constant(f"{tag}/q_axes", [1, 2])], name=f"{tag}/q_col")[0]  # [S, 1, 1]
        back = w.node("Sub", [q_col, keys], name=f"{tag}/back")[0]  # [S, 1, P + S]: how far back each key lies
        hidden = w.node("Less", [back, zero], name=f"{tag}/future")[0]
        if window is not None:
            too_far = w.node("GreaterOrEqual", [back, w.constant(f"{tag}/window", window)], name=f"{tag}/too_far")[0]
            hidden = w.node("Or", [hidden, too_far], name=f"{tag}/hidden")[0]
        mask = w.node("Where", [hidden, w.initializer(f"{tag}/neg_inf", np.array(NEG_INF, dtype=self.dtype)),
                                w.initializer(f"{tag}/zero_f", np.array(0, dtype=self.dtype))], name=tag)[0]
        self._masks[window] = mask
        return mask

