"""MatMulNBits alone on this CPU: decode (M=1) and prefill (M=128) milliseconds per block size and bits, for the
Qwen2.5-1.5B gate|up and down shapes (random weights, accuracy level 4, 2 threads, best of 3).

    python bench/matmulnbits_blocks.py
"""
import time, numpy as np, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper

def model(k, n, bits, block):
    blocks = k // block
    b = np.random.randint(0, 256, (n, blocks, block * bits // 8)).astype(np.uint8)
    s = (np.random.rand(n * blocks).astype(np.float32) + 0.5) * 1e-2
    z = np.random.randint(0, 256, (n * (blocks if bits == 8 else (blocks + 1) // 2),)).astype(np.uint8)
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(s, "s"), numpy_helper.from_array(z, "z")]
    node = helper.make_node("MatMulNBits", ["x", "b", "s", "z"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=4)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

for k, n, what in ((1536, 17920, "gate|up"), (8960, 1536, "down")):
    for bits, block in ((4, 128), (4, 64), (4, 32), (8, 128)):
        sess = model(k, n, bits, block)
        row = []
        for m, reps in ((1, 200), (128, 10)):
            x = np.random.randn(m, k).astype(np.float32)
            for _ in range(3): sess.run(None, {"x": x})
            times = []
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(reps): sess.run(None, {"x": x})
                times.append((time.perf_counter() - t) / reps * 1e3)
            row.append(f"M={m}: {min(times):.3f} ms")
        print(f"{what} K={k} N={n} bits={bits} block={block}: " + ", ".join(row), flush=True)
