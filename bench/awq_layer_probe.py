"""Layer 0 of a real checkpoint, without running the model: how each 4-bit rounding changes what the first matmuls
compute, on held-out text. Layer 0's q|k read RMSNorm(embedding) only, so their inputs come from the table alone.

Per variant, the output error of q|k (the 4-bit ones of layer 0) relative to their output, sum over held-out tokens
of |x dW|^2 / |x W|^2, with H for the search and GPTQ from the calibration text (export/linear_calibration.py's) and
the error measured on bench/fidelity.py's text (textwrap's source); and for the embedding table, its own relative
error and the error it causes in layer 0's q|k output.

    python bench/awq_layer_probe.py weights/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import inspect
import textwrap

import numpy as np

from edgeinfer.export.gptq import InverseHessian
from edgeinfer.export.linear_calibration import calibration_sequences
from edgeinfer.export.open_source import open_source
from edgeinfer.export.qdq import chat_prompts
from edgeinfer.export.quantize import dequantize_blocks, quantize_blocks
from edgeinfer.export.weighted_blocks import SEARCH_STEPS, dequantize, gptq_blocks, round_blocks, search_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()
    source = open_source(args.source, False)
    table = source.tensor("model.embed_tokens.weight")
    gains = source.tensor("model.layers.0.input_layernorm.weight")
    eps = source.spec.rms_norm_eps

    def normed(rows: np.ndarray) -> np.ndarray:
        return (rows / np.sqrt((rows**2).mean(-1, keepdims=True) + eps) * gains).astype(np.float32)

    calibration = np.concatenate([normed(table[np.array(ids)]) for ids in calibration_sequences(source, 2560)])
    held_ids = np.array(chat_prompts(source, [inspect.getsource(textwrap)], 1024)[0])
    held = normed(table[held_ids])
    h_cal, h_held = calibration.T @ calibration / len(calibration), held.T @ held / len(held)
    weight = np.concatenate([source.tensor(f"model.layers.0.self_attn.{t}_proj.weight") for t in "qk"]).T.copy()
    block = args.block_size

    def output_error(approx: np.ndarray) -> float:
        delta = approx - weight
        return float(np.einsum("kn,kl,ln->", delta, h_held, delta) / np.einsum("kn,kl,ln->", weight, h_held, weight))

    nearest = quantize_blocks(weight.T, block, False)
    from edgeinfer.export.quantize import _unpack

    s0 = nearest.scales.T.copy()
    z0 = _unpack(nearest.zero_points, 4)[:, : s0.shape[0]].T.copy()
    rows = [("round to nearest (onnxruntime)", output_error(dequantize_blocks(nearest).T))]
    rows.append(("nearest scales, GPTQ", output_error(dequantize(gptq_blocks(weight, InverseHessian.of(h_cal.copy()), s0, z0), s0, z0))))
    for label, steps in (("1 step", (0.0,)), (f"{len(SEARCH_STEPS)} steps (default)", SEARCH_STEPS), ("17 steps", tuple(np.arange(0, 4.01, 0.25)))):
        s, z = search_blocks(weight, np.ones(len(weight), dtype=np.float32), block, steps)
        rows.append((f"unweighted search, {label}", output_error(dequantize(round_blocks(weight, s, z), s, z))))
        s, z = search_blocks(weight, np.diag(h_cal).copy(), block, steps)
        rows.append((f"weighted search, {label}", output_error(dequantize(round_blocks(weight, s, z), s, z))))
        rows.append((f"weighted search, {label}, GPTQ", output_error(dequantize(gptq_blocks(weight, InverseHessian.of(h_cal.copy()), s, z), s, z))))
    print(f"layer 0 q|k, block {block}: output error on held-out text / output")
    for label, value in rows:
        print(f"| {label} | {value:.3e} |")

    used = table[np.unique(held_ids)]
    reference = normed(used) @ weight

    def table_error(approx: np.ndarray) -> tuple[float, float]:
        own = float(((approx - used) ** 2).sum() / (used**2).sum())
        return own, float(((normed(approx) @ weight - reference) ** 2).sum() / (reference**2).sum())

    print("embedding table (rows of the held-out text): own error, layer 0 q|k output error")
    for embedding_block in (128, 32):
        variants = [("round to nearest", dequantize_blocks(quantize_blocks(used, embedding_block, False)))]
        for label, importance in (("unweighted search", np.ones(used.shape[1], dtype=np.float32)),
                                  ("search weighted by gains^2", np.square(gains, dtype=np.float32))):
            s, z = search_blocks(used.T.copy(), importance, embedding_block)
            variants.append((label, dequantize(round_blocks(used.T, s, z), s, z).T))
        for label, approx in variants:
            own, out = table_error(approx)
            print(f"| block {embedding_block}, {label} | {own:.3e} | {out:.3e} |")


if __name__ == "__main__":
    main()
