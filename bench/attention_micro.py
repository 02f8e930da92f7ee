"""GroupQueryAttention alone on the CPU EP at a long depth, fp32 against an fp16 cache (the whole op in fp16: the
CPU kernel has one type for q, k, v and the cache): is an fp16 cache a way to read fewer bytes per decode step?

    /work/heavy python bench/attention_micro.py [--depth 4064] [--steps 20]

28 layers of Qwen2.5-1.5B's attention (12 heads, 2 kv heads, head dim 128) in one graph, one decode token, each
layer's past and present bound to one random-filled buffer. Prints ms per step and the cache bandwidth it implies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 12, 2, 128, 28


def gqa_graph(dtype, context: int) -> bytes:
    t = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    inputs = [helper.make_tensor_value_info("qkv", t, [1, 1, width]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    outputs, nodes, cache = [], [], [1, KV_HEADS, context, HEAD_DIM]
    for i in range(LAYERS):
        inputs += [helper.make_tensor_value_info(f"past_k{i}", t, cache), helper.make_tensor_value_info(f"past_v{i}", t, cache)]
        outputs += [helper.make_tensor_value_info(f"out{i}", t, [1, 1, HEADS * HEAD_DIM]),
                    helper.make_tensor_value_info(f"k{i}", t, cache), helper.make_tensor_value_info(f"v{i}", t, cache)]
        nodes.append(helper.make_node("GroupQueryAttention", ["qkv", "", "", f"past_k{i}", f"past_v{i}", "seqlens_k", "total"],
                                      [f"out{i}", f"k{i}", f"v{i}"], domain="com.microsoft", num_heads=HEADS,
                                      kv_num_heads=KV_HEADS))
    graph = helper.make_graph(nodes, "gqa", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]).SerializeToString()


def step_ms(dtype, depth: int, context: int, steps: int, threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(gqa_graph(dtype, context), options, providers=["CPUExecutionProvider"])
    binding, rng, keep = session.io_binding(), np.random.default_rng(0), []
    for i in range(LAYERS):
        for kind in ("k", "v"):
            buffer = rng.standard_normal((1, KV_HEADS, context, HEAD_DIM), dtype=np.float32).astype(dtype)
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
            keep.append(buffer)
            binding.bind_ortvalue_input(f"past_{kind}{i}", value)
            binding.bind_ortvalue_output(f"{kind}{i}", value)
        binding.bind_output(f"out{i}", "cpu")
    binding.bind_cpu_input("qkv", rng.standard_normal((1, 1, (HEADS + 2 * KV_HEADS) * HEAD_DIM)).astype(dtype))
    binding.bind_cpu_input("seqlens_k", np.array([depth], np.int32))
    binding.bind_cpu_input("total", np.array(depth + 1, np.int32))
    session.run_with_iobinding(binding)
    start = time.perf_counter()
    for _ in range(steps):
        session.run_with_iobinding(binding)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=4064)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for dtype in (np.float32, np.float16, np.float32, np.float16):  # alternated: load from others falls on both
        ms = step_ms(dtype, args.depth, args.context, args.steps, args.threads)
        cache = 2 * LAYERS * KV_HEADS * (args.depth + 1) * HEAD_DIM * np.dtype(dtype).itemsize
        print(f"GroupQueryAttention {np.dtype(dtype).name} cache, depth {args.depth}: {ms:.1f} ms per step "
              f"({LAYERS} layers), {cache / 1e6:.0f} MB of cache at {cache / ms / 1e6:.2f} GB/s")


if __name__ == "__main__":
    main()
