"""A proxy for issue 19's next lever: the float path's F32 GGUF with ffn_gate/ffn_up put back in the original file's
Q4_K blocks (the best a Q4_K-style search of a scale and a float min per 32 weights could find), everything else F32.

    python bench/gguf_keep_gate_up_q4k.py F32.gguf Q4_K_M.gguf OUT.gguf
    edgeinfer export OUT.gguf -o PKG --eight-bit attention-down --lm-head-bits 4 --no-exact-speculation

The export keeps gate|up in the file's blocks (the lossless import's form: MatMulNBits over 32 plus the mins' matmul)
and quantizes the rest from floats as the float path's default does. Figures:
bench/results/float-path-gate-up-q4k-proxy-qwen2.5-coder-1.5b.md."""
import sys
import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType, GGMLQuantizationType

F32, Q = sys.argv[1], sys.argv[2]
out = sys.argv[3]
rf, rq = GGUFReader(F32), GGUFReader(Q)
quant = {t.name: t for t in rq.tensors}
arch = rf.fields["general.architecture"]
w = GGUFWriter(out, arch=bytes(arch.parts[arch.data[0]]).decode())
for name, field in rf.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            val = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        else:
            val = [field.parts[i].tolist()[0] for i in field.data]
        w.add_key_value(name, val, vtype, sub_type=sub)
    elif vtype == GGUFValueType.STRING:
        w.add_key_value(name, bytes(field.parts[field.data[0]]).decode("utf-8", "surrogateescape"), vtype)
    else:
        w.add_key_value(name, field.parts[field.data[0]].tolist()[0], vtype)
kept = 0
for t in rf.tensors:
    if t.name.endswith(("ffn_gate.weight", "ffn_up.weight")):
        q = quant[t.name]
        assert q.tensor_type == GGMLQuantizationType.Q4_K
        w.add_tensor(t.name, np.asarray(q.data), raw_shape=tuple(np.asarray(q.data).shape), raw_dtype=GGMLQuantizationType.Q4_K)
        kept += 1
    else:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=tuple(int(x) for x in reversed(t.shape)), raw_dtype=t.tensor_type)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("Q4_K tensors kept:", kept)
