"""The dynamic graph's matmuls and embedding over a GGUF's own blocks (gguf_blocks.ExactBlocks), no requantizing.

A linear is MatMulNBits over the file's codes with the scales computed in the graph from the file's fields (float16
times a small integer: exact in float32; onnxruntime folds these constant subgraphs once at load, so MatMulNBits
still sees constant scales and prepacks them). Formats with mins add sum(x over each block) @ offset, a small
float matmul (K / 32 inputs; 8% of a Q4_K_M decode step). Tried and measured slower on the real Q4_K_M: the K-quants'
mins as an 8-bit MatMulNBits over the block sums (6-bit m as codes, a superblock's 8 sums padded to a block of 16,
-dmin as its scale: 24 bytes read where the float offsets read 32), 0.92x decode and 0.86x prefill
(bench/results/lossless-forms-cpu.md). Weights of different GGUF types in one fused matmul (Q4_K_M's q|k Q4_K beside a
Q6_K v) become one MatMulNBits per type, joined by a Concat.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .gguf_blocks import ExactBlocks, Factors, concat_rows
from .onnx_writer import GraphWriter

MS = "com.microsoft"


def group_by_layout(parts: list[ExactBlocks]) -> list[ExactBlocks]:
    """Consecutive weights of one layout stacked into one, in order."""
    groups: list[list[ExactBlocks]] = []
    for blocks in parts:
        if groups and groups[-1][0].layout == blocks.layout:
            groups[-1].append(blocks)
        else:
            groups.append([blocks])
    return [concat_rows(g) if len(g) > 1 else g[0] for g in groups]


class ExactBlockGraph:
    """Writes ExactBlocks as graph nodes into W; ONNX_TYPE / DTYPE: the activations' type (scales take it)."""

    def __init__(self, writer: GraphWriter, onnx_type: int, dtype: np.dtype, accuracy_level: int):
        self.w, self.onnx_type, self.dtype, self.accuracy_level = writer, onnx_type, dtype, accuracy_level
        self._block_sums: dict[tuple[str, int], str] = {}

    def factor_values(self, name: str, factors: Factors) -> str:
        """float32 [N, B]: coarse (float16) times fine (integers), computed in the graph."""
        w = self.w
        coarse = w.node("Cast", [w.initializer(f"{name}.coarse", factors.coarse)], name=f"{name}/coarse", to=TensorProto.FLOAT)[0]
        if factors.fine is None:
            return coarse
        n, c = factors.coarse.shape
        fine = w.node("Cast", [w.initializer(f"{name}.fine", factors.fine)], name=f"{name}/fine", to=TensorProto.FLOAT)[0]
        product = w.node("Mul", [
            w.node("Reshape", [coarse, w.constant(f"{name}/coarse_shape", [n, c, 1])], name=f"{name}/coarse3")[0],
            w.node("Reshape", [fine, w.constant(f"{name}/fine_shape", [n, c, -1])], name=f"{name}/fine3")[0],
        ], name=f"{name}/product")[0]
        return w.node("Reshape", [product, w.constant(f"{name}/shape", [n, -1])], name=f"{name}/values")[0]

    def offsets(self, name: str, blocks: ExactBlocks, scales: str) -> str:
        """offset_steps * SCALES + shift, float32 [N, B] (SCALES: factor_values of blocks.scale)."""
        w = self.w
        shift = self.factor_values(f"{name}.shift", blocks.shift)
        if not blocks.offset_steps:
            return shift
        steps = w.constant(f"{name}.offset_steps", np.float32(blocks.offset_steps), dtype=np.float32)
        return w.node("Add", [w.node("Mul", [scales, steps], name=f"{name}/steps")[0], shift], name=f"{name}/offset")[0]

    def _as_activation(self, values: str, name: str) -> str:
        if self.dtype == np.float32:
            return values
        return self.w.node("Cast", [values], name=f"{name}/cast", to=self.onnx_type)[0]

    def block_sums(self, x: str, block: int) -> str:
        """X [B, S, K] summed over each BLOCK of K: [B, S, K // BLOCK] (once per input and block size)."""
        key = (x, block)
        if key not in self._block_sums:
            w = self.w
            blocks = w.node("Reshape", [x, w.constant(f"{x}/blocks{block}", [0, 0, -1, block])], name=f"{x}/blocks{block}")[0]
            self._block_sums[key] = w.node("ReduceSum", [blocks, w.constant(f"{x}/last_axis", [-1])],
                                           name=f"{x}/block_sums{block}", keepdims=0)[0]
        return self._block_sums[key]

    def linear(self, x: str, name: str, parts: list[ExactBlocks], bias: np.ndarray | None) -> str:
        """y = x W^T (+ bias) for W the rows of PARTS stacked."""
        groups = group_by_layout(parts)
        outputs, row = [], 0
        for j, blocks in enumerate(groups):
            node = name if len(groups) == 1 else f"{name}.{j}"
            outputs.append(self._matmul(x, node, blocks, None if bias is None else bias[row : row + blocks.shape[0]]))
            row += blocks.shape[0]
        if len(outputs) == 1:
            return outputs[0]
        return self.w.node("Concat", outputs, name=f"{name}/concat", axis=-1)[0]

    def _matmul(self, x: str, name: str, blocks: ExactBlocks, bias: np.ndarray | None) -> str:
        w = self.w
        n, k = blocks.shape
        scales = self.factor_values(f"{name}.scale", blocks.scale)  # float32 [N, B]
        flat = w.node("Reshape", [scales, w.constant(f"{name}/flat", [-1])], name=f"{name}/scales")[0]
        inputs = [x, w.initializer(f"{name}.qweight", blocks.packed()), self._as_activation(flat, f"{name}.scale")]
        if bias is not None:
            inputs += ["", "", w.initializer(f"{name}.bias", bias.astype(self.dtype))]
        y = w.node("MatMulNBits", inputs, name=name, domain=MS, K=k, N=n, bits=blocks.bits,
                   block_size=blocks.block_size, accuracy_level=self.accuracy_level)[0]
        if blocks.shift is None:
            return y
        offsets = w.node("Transpose", [self.offsets(name, blocks, scales)], name=f"{name}/offsets_t", perm=[1, 0])[0]
        mins = w.node("MatMul", [self.block_sums(x, blocks.block_size), self._as_activation(offsets, f"{name}.offsets")],
                      name=f"{name}/offsets")[0]
        return w.node("Add", [y, mins], name=f"{name}/add_offsets")[0]

    def embedding(self, input_ids: str, blocks: ExactBlocks) -> str:
        """GatherBlockQuantized over the table's codes, plus each block's offset gathered with it."""
        w = self.w
        v, k = blocks.shape
        data = blocks.packed().reshape(v, -1)
        scales = self.factor_values("embed.scale", blocks.scale)
        out = w.node("GatherBlockQuantized", [w.initializer("embed.qweight", data), input_ids,
                                              self._as_activation(scales, "embed.scale")],
                     name="embed", domain=MS, bits=blocks.bits, block_size=blocks.block_size, gather_axis=0, quantize_axis=1)[0]
        if blocks.shift is None:
            return out
        offsets = w.node("Gather", [self._as_activation(self.offsets("embed", blocks, scales), "embed.offsets"), input_ids],
                         name="embed/offsets", axis=0)[0]  # [B, S, K // block]
        per_block = w.node("Reshape", [out, w.constant("embed/blocks", [0, 0, -1, blocks.block_size])], name="embed/blocks")[0]
        offsets = w.node("Unsqueeze", [offsets, w.constant("embed/last_axis", [-1])], name="embed/offsets4")[0]
        summed = w.node("Add", [per_block, offsets], name="embed/add_offsets")[0]
        return w.node("Reshape", [summed, w.constant("embed/flat", [0, 0, k])], name="embed/flat")[0]
