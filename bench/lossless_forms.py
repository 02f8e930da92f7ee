"""Exact forms of a GGUF's Q4_K and Q6_K matmuls on this CPU: milliseconds per form at M = 1 and 8 rows.

    /work/heavy python bench/lossless_forms.py [--rounds 15] [--shapes gate_up,down,lm_head] [--cached]

Q4_K (4-bit codes, a scale d*sc per 32, a min dmin*m per 32) as the lossless import writes it, and the candidates:
- q4k_now:      MatMulNBits(4-bit, block 32) + sum(x over each block) @ offsets (float32 [K/32, N] MatMul)
- q4k_blk16:    q4k_now with MatMulNBits at block 16 (each scale twice): MLAS's block-16 kernel
- q4k_floatzp:  MatMulNBits(4-bit, block 32) with float zero points zp = 8 - offset / scale (the mins inside it)
- q4k_mins8:    MatMulNBits(4-bit, block 32) + the mins as an 8-bit MatMulNBits of block 16 over the block sums,
                each superblock's 8 sums padded to 16 (one -dmin a block, codes m + 128)
- q4k_nomins:   MatMulNBits(4-bit, block 32) alone: the floor for any form of the mins
Q6_K (6-bit codes, a scale d*sc per 16):
- q6k_now:      MatMulNBits(8-bit, block 16)
- q6k_split4:   one 4-bit MatMulNBits of block 16 over [x, x] (K doubled): q = 16 h + l as l (scale d*sc) and
                2h + 5 (scale 8 d*sc), so that d*sc*(l - 8) + 8 d*sc*(2h + 5 - 8) = d*sc*(q - 32)
- q8_blk32:     MatMulNBits(8-bit, block 32) (not exact for Q6_K: what block 16 costs)
- q4_blk16:     MatMulNBits(4-bit, block 16) (not a Q6_K form: the kernel's speed at block 16)
Reference: q4_blk128: MatMulNBits(4-bit, block 128, uint8 zero points), the --requantize form.

Random codes and scales (speed does not depend on the values); accuracy level 4, 2 threads. Each form is timed over
copies of its matrix that together exceed the L3 cache (a decode step streams 1.2 GB of weights from memory; one
matrix alone runs from this Xeon's 105 MiB L3 and times the kernel's arithmetic instead). The forms of one shape
run in alternation, ROUNDS times, and the best round is printed; max |difference| against numpy's float64 of the same
weights says whether a form computes what it should (int8 activations: a few 1e-3 relative is the normal error).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = {"gate_up": (1536, 17920), "down": (8960, 1536), "lm_head": (1536, 151936)}
Q4K_FORMS = ("q4k_now", "q4k_blk16", "q4k_floatzp", "q4k_mins8", "q4k_nomins", "q4_blk128")


def _session(nodes, inits, k: int, n: int, copies: int = 1) -> ort.InferenceSession:
    """One session running COPIES of the graph NODES/INITS side by side on one x (outputs y0, y1...): one thread
    pool, one node after another, as a decode step runs its layers."""
    all_nodes, all_inits, outputs = [], [], []
    for c in range(copies):
        rename = {name: f"{name}.{c}" for name in inits}
        rename.update({o: f"{o}.{c}" for node in nodes for o in node.output})
        for node in nodes:
            copy = helper.make_node(node.op_type, [rename.get(i, i) for i in node.input], [rename[o] for o in node.output],
                                    domain=node.domain or None)
            copy.attribute.extend(node.attribute)
            all_nodes.append(copy)
        all_inits += [numpy_helper.from_array(v, rename[name]) for name, v in inits.items()]
        outputs.append(helper.make_tensor_value_info(f"y.{c}", TensorProto.FLOAT, ["M", n]))
    graph = helper.make_graph(all_nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                              outputs, all_inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _mnb(x, b, s, out, k, n, bits, block, z=None, level=4):
    inputs = [x, b, s] + ([z] if z else [])
    return helper.make_node("MatMulNBits", inputs, [out], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=level)


def _pack4(codes: np.ndarray) -> np.ndarray:
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def q4k_weights(k: int, n: int, rng) -> dict:
    """Q4_K's fields for an [N, K] weight: codes, scale per 32 and offset per 32 = 8 * scale - dmin * m."""
    nb, ns = k // 32, k // 256
    d = (rng.random((n, ns, 1)) * 1e-3 + 1e-4).astype(np.float16).astype(np.float32)
    dmin = (rng.random((n, ns, 1)) * 1e-3).astype(np.float16).astype(np.float32)
    sc = rng.integers(0, 64, (n, ns, 8)).astype(np.float32)
    m = rng.integers(0, 64, (n, ns, 8)).astype(np.uint8)
    scale = (d * sc).reshape(n, nb)
    offset = (np.float32(8) * scale - (dmin * m.astype(np.float32)).reshape(n, nb)).astype(np.float32)
    codes = rng.integers(0, 16, (n, nb, 32)).astype(np.uint8)
    weight = (codes.astype(np.float64) - 8) * scale[..., None].astype(np.float64) + offset[..., None]
    return dict(codes=codes, scale=scale, offset=offset, dmin=dmin.reshape(n, ns), m=m, weight=weight.reshape(n, k))


def q4k_form(form: str, k: int, n: int, w: dict, copies: int = 1) -> ort.InferenceSession:
    nb = k // 32
    inits = {"b": _pack4(w["codes"]), "s": w["scale"].reshape(-1)}
    if form == "q4k_floatzp":
        # scale * (q - zp) = scale * (q - 8) + offset  =>  zp = 8 - offset / scale (rounded: not exact in general)
        zp = (np.float32(8) - w["offset"] / np.where(w["scale"] == 0, 1, w["scale"])).astype(np.float32)
        inits["z"] = zp.reshape(-1)
        return _session([_mnb("x", "b", "s", "y", k, n, 4, 32, "z")], inits, k, n, copies)
    if form == "q4k_blk16":
        inits = {"b": _pack4(w["codes"].reshape(n, 2 * nb, 16)), "s": np.repeat(w["scale"], 2, axis=1).reshape(-1)}
    if form == "q4k_nomins":
        return _session([_mnb("x", "b", "s", "y", k, n, 4, 32)], inits, k, n, copies)
    nodes = [_mnb("x", "b", "s", "main", k, n, 4, 16 if form == "q4k_blk16" else 32),
             helper.make_node("Reshape", ["x", "blocks_shape"], ["xb"]),
             helper.make_node("ReduceSum", ["xb", "last"], ["sums"], keepdims=0)]
    inits["blocks_shape"] = np.array([0, nb, 32], np.int64)
    inits["last"] = np.array([-1], np.int64)
    if form in ("q4k_now", "q4k_blk16"):
        inits["offsets"] = np.ascontiguousarray(w["offset"].T)
        nodes += [helper.make_node("MatMul", ["sums", "offsets"], ["mins"])]
    elif form == "q4k_mins8":
        # w = scale * q - dmin * m: the main matmul takes codes q with zero point 0, the mins matmul -dmin * m
        ns = k // 256
        nodes[0] = _mnb("x", "b", "s", "main", k, n, 4, 32, "z0")
        inits["z0"] = np.zeros(n * ((nb + 1) // 2), np.uint8)
        mcodes = np.full((n, ns, 16), 128, np.uint8)
        mcodes[:, :, :8] = w["m"] + 128
        inits["mb"] = mcodes
        inits["ms"] = (-w["dmin"]).astype(np.float32).reshape(-1)
        inits["sb_shape"] = np.array([0, ns, 8], np.int64)
        inits["pads"] = np.array([0, 0, 0, 0, 0, 8], np.int64)
        inits["flat_shape"] = np.array([0, ns * 16], np.int64)
        nodes += [helper.make_node("Reshape", ["sums", "sb_shape"], ["sums3"]),
                  helper.make_node("Pad", ["sums3", "pads"], ["padded"]),
                  helper.make_node("Reshape", ["padded", "flat_shape"], ["sums16"]),
                  _mnb("sums16", "mb", "ms", "mins", ns * 16, n, 8, 16)]
    elif form == "q4_blk128":
        return q4_blk128(k, n, np.random.default_rng(1), copies)
    nodes += [helper.make_node("Add", ["main", "mins"], ["y"])]
    return _session(nodes, inits, k, n, copies)


def q4_blk128(k: int, n: int, rng, copies: int = 1) -> ort.InferenceSession:
    nb = k // 128
    inits = {"b": _pack4(rng.integers(0, 16, (n, nb, 128)).astype(np.uint8)),
             "s": (rng.random(n * nb).astype(np.float32) + 0.5) * 1e-2,
             "z": rng.integers(0, 256, n * ((nb + 1) // 2)).astype(np.uint8)}
    return _session([_mnb("x", "b", "s", "y", k, n, 4, 128, "z")], inits, k, n, copies)


def q8_form(block: int, k: int, n: int, rng, copies: int = 1) -> tuple[ort.InferenceSession, np.ndarray]:
    nb = k // block
    codes = rng.integers(64, 192, (n, nb, block)).astype(np.uint8)
    scale = (rng.random((n, nb)).astype(np.float32) + 0.5) * 1e-3
    weight = (codes.astype(np.float64) - 128) * scale[..., None]
    inits = {"b": codes, "s": scale.reshape(-1)}
    return _session([_mnb("x", "b", "s", "y", k, n, 8, block)], inits, k, n, copies), weight.reshape(n, k)


def q6k_split4(k: int, n: int, rng, copies: int = 1) -> tuple[ort.InferenceSession, np.ndarray]:
    nb = k // 16
    q = rng.integers(0, 64, (n, nb, 16)).astype(np.uint8)
    scale = (rng.random((n, nb)).astype(np.float32) + 0.5) * 1e-3
    weight = (q.astype(np.float64) - 32) * scale[..., None]
    codes = np.concatenate([q & 15, 2 * (q >> 4) + 5], axis=1)  # [N, 2 * nb, 16]: the low blocks, then the high
    inits = {"b": _pack4(codes), "s": np.concatenate([scale, 8 * scale], axis=1).reshape(-1)}
    nodes = [helper.make_node("Concat", ["x", "x"], ["xx"], axis=-1), _mnb("xx", "b", "s", "y", 2 * k, n, 4, 16)]
    return _session(nodes, inits, k, n, copies), weight.reshape(n, k)


def q4_blk16(k: int, n: int, rng, copies: int = 1) -> ort.InferenceSession:
    nb = k // 16
    inits = {"b": _pack4(rng.integers(0, 16, (n, nb, 16)).astype(np.uint8)),
             "s": (rng.random(n * nb).astype(np.float32) + 0.5) * 1e-2}
    return _session([_mnb("x", "b", "s", "y", k, n, 4, 16)], inits, k, n, copies)


def time_forms(forms: dict, k: int, rounds: int, rows=(1, 8)) -> dict:
    """FORMS: name -> (session, copies); milliseconds per copy, best of ROUNDS passes."""
    rng = np.random.default_rng(2)
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in rows}
    times = {(f, m): [] for f in forms for m in rows}
    for session, _ in forms.values():
        for m in rows:
            session.run(None, {"x": xs[m]})
    for _ in range(rounds):
        for f, (session, copies) in forms.items():
            for m in rows:
                t = time.perf_counter()
                session.run(None, {"x": xs[m]})
                times[(f, m)].append((time.perf_counter() - t) / copies * 1e3)
    # best of the rounds: other processes on the 2 cores only ever add time (a busy core stalls one of the 2 threads)
    return {key: float(np.min(v)) for key, v in times.items()}


def relative_error(session, weight: np.ndarray | None, k: int) -> str:
    if weight is None:
        return "-"
    x = np.random.default_rng(3).standard_normal((2, k)).astype(np.float32)
    ref = x.astype(np.float64) @ weight.T
    return f"{np.abs(session.run(None, {'x': x})[0] - ref).max() / np.abs(ref).max():.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--shapes", default="gate_up,down,lm_head")
    parser.add_argument("--kinds", default="q4k,q6k")
    parser.add_argument("--stream-mb", type=int, default=320, help="weights a pass reads, in MiB (copies of the matrix)")
    parser.add_argument("--cached", action="store_true", help="one copy: the matrix from cache, as a lone matmul runs")
    args = parser.parse_args()
    print("| shape | K x N | form | copies | M=1 ms | M=8 ms | rel. error |\n|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        k, n = SHAPES[shape]
        # Copies enough that a pass reads more than the 105 MiB L3 (decode streams its weights from memory; one
        # matrix alone would be timed from cache).
        copies = 1 if args.cached else max(1, -(-args.stream_mb * 2**20 // (k * n)))
        rng = np.random.default_rng(0)
        forms, errors = {}, {}

        def add(form, make):
            count = 1 if form == "q4k_floatzp" else copies  # floatzp: ~30x slower anyway
            made = make(count)
            session, weight = made if isinstance(made, tuple) else (made, None)
            errors[form] = relative_error(session, weight, k)
            forms[form] = (session, count)

        if "q4k" in args.kinds and shape != "lm_head":
            w = q4k_weights(k, n, rng)
            for form in Q4K_FORMS:
                add(form, lambda c, form=form: (q4k_form(form, k, n, w, c),
                                                None if form in ("q4k_nomins", "q4_blk128") else w["weight"]))
            del w
        if "q6k" in args.kinds and shape != "gate_up":
            add("q6k_now", lambda c: q8_form(16, k, n, rng, c))
            add("q6k_split4", lambda c: q6k_split4(k, n, rng, c))
            add("q8_blk32", lambda c: q8_form(32, k, n, rng, c))
            add("q4_blk16", lambda c: q4_blk16(k, n, rng, c))
            if "q4_blk128" not in forms:
                add("q4_blk128", lambda c: q4_blk128(k, n, rng, c))
        times = time_forms(forms, k, args.rounds)
        for f in forms:
            print(f"| {shape} | {k} x {n} | {f} | {forms[f][1]} | {times[(f, 1)]:.2f} | {times[(f, 8)]:.2f} | {errors[f]} |",
                  flush=True)
        forms.clear()


if __name__ == "__main__":
    main()
