"""One decode-shaped MatMulNBits of the 1.5B (1 x 1536 @ 1536 x 8960, int4, blocks of 32), timed on the CPU EP and on
OpenVINO's CPU device, with the zero points the openvino target writes (float) and the cpu target's (uint8):

    python bench/openvino_matmul_probe.py [--threads 1] [--runs 20]

Why a package runs at the speed it does: the CPU EP has a fast kernel for uint8 zero points only (float ones fall
back to dequantizing the whole weight each run), while OpenVINO reads both alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.export.quantize import quantize_blocks, quantize_blocks_float_zero

K, N, BLOCK = 1536, 8960, 32


def matmul_model(q, folder: Path, name: str) -> str:
    zero_points = q.zero_points.reshape(-1)
    zero_type = TensorProto.FLOAT if zero_points.dtype == np.float32 else TensorProto.UINT8
    weights = [helper.make_tensor("B", TensorProto.UINT8, q.packed.shape, q.packed.tobytes(), raw=True),
               helper.make_tensor("S", TensorProto.FLOAT, [q.scales.size], q.scales.reshape(-1).tobytes(), raw=True),
               helper.make_tensor("Z", zero_type, [zero_points.size], zero_points.tobytes(), raw=True)]
    node = helper.make_node("MatMulNBits", ["x", "B", "S", "Z"], ["y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=BLOCK, accuracy_level=4)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def ms_per_run(session, runs: int) -> float:
    x = np.random.default_rng(1).standard_normal((1, K)).astype(np.float32)
    session.run(None, {"x": x})
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, {"x": x})
    return (time.perf_counter() - started) / runs * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    weight = np.random.default_rng(0).standard_normal((N, K)).astype(np.float32)
    kinds = {"float zero points (openvino target)": quantize_blocks_float_zero(weight, BLOCK),
             "uint8 zero points (cpu target)": quantize_blocks(weight, BLOCK, symmetric=False, bits=4)}
    openvino = get_backend("openvino:cpu")
    print(f"| zero points | CPU EP ms | OpenVINO CPU ms |  (onnxruntime {ort.__version__}, {args.threads} thread(s))")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, q in kinds.items():
            path = matmul_model(q, Path(folder), name.split()[0])
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            cpu = ms_per_run(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]), args.runs)
            ov = ms_per_run(openvino.create_session(path, BackendOptions(threads=args.threads)), args.runs) \
                if openvino.availability().ok else float("nan")
            print(f"| {name} | {cpu:.2f} | {ov:.2f} |")


if __name__ == "__main__":
    main()
