"""Where a 4-bit export's top-1 loss comes from: simulate bit allocations on real weights in torch, fast.

    python bench/float_path_probe.py SOURCE --tokenizer PKG/tokenizer.json --text FILE --first-chunk 20 --chunks 4 \
        --json OUT [--configs NAME,...]

Each config maps every quantized tensor (the 7 matmuls of each layer, the embedding table, lm_head) to float, 4-bit
or 8-bit blocks; the weights are rounded with the exporter's own packers (export/quantize.py: onnxruntime's
round-to-nearest, zero points, the same blocks) and dequantized into a float32 transformers Qwen2, which then runs
the text in edgeinfer eval's chunking (CONTEXT tokens from an empty cache, second half scored) against the same model
with the source's float weights. Activations stay float32 here (MatMulNBits' accuracy level 4 quantizes them to int8
per 32; the lossless import measured that at ~0.7 points of top-1), so the figures rank allocations; the package's
own figures come from `edgeinfer eval`. Chunks from --first-chunk on keep the probe off the chunks eval scores.

Bytes are what the package stores for each tensor at that allocation (4-bit: codes + float32 scale + 4-bit zero
point per block of 128; 8-bit: codes + scale + 8-bit zero point), so a config can be read against a byte budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeinfer.export.open_source import open_source  # noqa: E402
from edgeinfer.export.quantize import dequantize_blocks, quantize_blocks  # noqa: E402
from edgeinfer.export.weight_bits import LAYER_LINEARS, more_bits_layer  # noqa: E402

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def linear_names(layers: int) -> list[str]:
    return [f"model.layers.{i}.{hf}.weight" for i in range(layers) for hf, _ in LAYER_LINEARS]


def layer_of(name: str) -> int | None:
    return int(name.split(".")[2]) if name.startswith("model.layers.") else None


def stored_bytes(shape: tuple[int, int], bits: int, block: int) -> int:
    """Bytes of one [N, K] weight as the package stores it (float32 when bits is 0)."""
    n, k = shape
    if bits == 0:
        return n * k * 4
    blocks = -(-k // block)
    zero_bytes = -(-blocks // 2) if bits == 4 else blocks
    return n * blocks * block * bits // 8 + n * blocks * 4 + n * zero_bytes


class Allocation:
    """name -> (bits, block); bits 0 keeps the float weight."""

    def __init__(self, layers: int, default_rule: bool = True, head_bits: int = 8, embed_block: int = 128,
                 fused: bool = False):
        self.layers = layers
        self.fused = fused  # as the export stores them: q|k|v one matmul, gate|up one (so one bits for each)
        self.bits: dict[str, tuple[int, int]] = {}
        for name in linear_names(layers):
            eight = default_rule and name.endswith(("v_proj.weight", "down_proj.weight")) and \
                more_bits_layer(layer_of(name), layers)
            self.bits[name] = (8 if eight else 4, 128)
        self.bits[HEAD] = (head_bits, 128)
        self.bits[EMBED] = (4, embed_block)

    def set(self, names, bits: int, block: int = 128) -> "Allocation":
        for n in names:
            self.bits[n] = (bits, block)
        return self

    def resolved(self) -> dict[str, tuple[int, int]]:
        """The bits each tensor gets; fused: the most any member of q|k|v (gate|up) asks for (float where one is)."""
        if not self.fused:
            return dict(self.bits)
        out = dict(self.bits)
        for i in range(self.layers):
            for members in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
                names = [n for n in out if layer_of(n) == i and n.split(".")[-2] in members]
                bits = [out[n][0] for n in names]
                top = 0 if 0 in bits else max(bits)
                for n in names:
                    out[n] = (top, out[n][1])
        return out


def group(layers: int, what: str) -> list[str]:
    """Names of a group: "embed", "head", "layers:a-b", a projection ("down_proj", "v_proj", "attn" = q/k/o,
    "mlp_in" = gate/up), or "layer:i"."""
    names = linear_names(layers)
    if what == "embed":
        return [EMBED]
    if what == "head":
        return [HEAD]
    if what.startswith("layers:"):
        a, b = map(int, what.split(":")[1].split("-"))
        return [n for n in names if a <= layer_of(n) <= b]
    if what.startswith("layer:"):
        return [n for n in names if layer_of(n) == int(what.split(":")[1])]
    if what.startswith("down:"):
        return [f"model.layers.{what.split(':')[1]}.mlp.down_proj.weight"]
    suffixes = {"attn": ("q_proj.weight", "k_proj.weight", "o_proj.weight"), "mlp_in": ("gate_proj.weight", "up_proj.weight"),
                "qk": ("q_proj.weight", "k_proj.weight"), "o_proj": ("o_proj.weight",)}.get(what, (f"{what}.weight",))
    return [n for n in names if n.endswith(suffixes)]


def configs(layers: int) -> dict[str, Allocation]:
    """The allocations to measure, by name."""
    out: dict[str, Allocation] = {"default": Allocation(layers)}
    out["float"] = Allocation(layers).set([*linear_names(layers), EMBED, HEAD], 0)  # the check: KLD 0
    out["all4+head8"] = Allocation(layers, default_rule=False)
    for g in ("embed", "head", "layers:0-3", "layers:24-27", "down_proj", "v_proj", "attn", "mlp_in"):
        out[f"default, {g} float"] = Allocation(layers).set(group(layers, g), 0)
    out["default, embed b32"] = Allocation(layers, embed_block=32)
    out["default, embed 8-bit"] = Allocation(layers).set([EMBED], 8)
    for i in range(0, layers, 4):
        out[f"default, layers:{i}-{i + 3} float"] = Allocation(layers).set(group(layers, f"layers:{i}-{i + 3}"), 0)
    for i in range(layers):
        out[f"default, layer:{i} float"] = Allocation(layers).set(group(layers, f"layer:{i}"), 0)
    for i in range(layers):
        out[f"default, down:{i} 8"] = Allocation(layers).set(group(layers, f"down:{i}"), 8)
    out["all down 8"] = Allocation(layers).set(group(layers, "down_proj"), 8)
    # as the export stores them (q|k|v and gate|up fused: 8-bit v makes q|k|v 8-bit)
    out["export default"] = Allocation(layers, fused=True)
    out["export default, head 4"] = Allocation(layers, fused=True, head_bits=4)
    out["export all4+head8"] = Allocation(layers, fused=True, default_rule=False)
    attn = group(layers, "attn") + group(layers, "v_proj")
    out["export head 4, qkvo 8"] = Allocation(layers, fused=True, head_bits=4).set(attn, 8)
    out["export head 4, qkvo 8, down 8"] = Allocation(layers, fused=True, head_bits=4).set(attn + group(layers, "down_proj"), 8)
    out["export head 8, qkvo 8"] = Allocation(layers, fused=True).set(attn, 8)
    out["default, head 4"] = Allocation(layers, head_bits=4)
    out["all4+head4"] = Allocation(layers, default_rule=False, head_bits=4)
    out["all down 8, head 4"] = Allocation(layers, head_bits=4).set(group(layers, "down_proj"), 8)
    return out


class Probe:
    def __init__(self, source_path: str, rotate: bool = False):
        from transformers import Qwen2Config, Qwen2ForCausalLM
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

        source = open_source(source_path)
        if rotate:
            from edgeinfer.export.rotation import RotatedResidual
            source = RotatedResidual(source)
        self.source, spec = source, source.spec
        self.layers = spec.num_layers
        config = Qwen2Config(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                             intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
                             num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
                             rms_norm_eps=spec.rms_norm_eps, rope_theta=spec.rope_theta,
                             max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=False)
        with torch.device("meta"):
            model = Qwen2ForCausalLM(config)
        model.to_empty(device="cpu")
        model.model.rotary_emb = Qwen2RotaryEmbedding(config=config)
        self.model = model.eval()
        self.params = dict(model.named_parameters())
        for name, p in self.params.items():
            with torch.no_grad():
                p.copy_(torch.from_numpy(source.tensor(name).astype(np.float32)))
        self.current = {n: (0, 0) for n in [*linear_names(self.layers), EMBED, HEAD]}
        self.cache: dict[tuple[str, int, int], np.ndarray] = {}  # float16 dequantized weights
        self.shapes = {n: tuple(self.params[n].shape) for n in self.current}

    def quantized(self, name: str, bits: int, block: int) -> np.ndarray:
        key = (name, bits, block)
        if key not in self.cache:
            w = self.source.tensor(name).astype(np.float32)
            self.cache[key] = dequantize_blocks(quantize_blocks(w, block, False, bits), w.shape[1]).astype(np.float16)
        return self.cache[key]

    def apply(self, alloc: Allocation) -> None:
        for name, want in alloc.resolved().items():
            if self.current[name] == want:
                continue
            bits, block = want
            w = self.source.tensor(name).astype(np.float32) if bits == 0 else self.quantized(name, bits, block)
            with torch.no_grad():
                self.params[name].copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))
            self.current[name] = want

    def logprobs(self, ids: list[int], first: int) -> torch.Tensor:
        with torch.no_grad():
            hidden = self.model.model(torch.tensor([ids]), use_cache=False).last_hidden_state[0, first : len(ids) - 1]
            return torch.log_softmax(self.model.lm_head(hidden).double(), -1)


def score(logp: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor) -> dict:
    rows = torch.arange(len(targets))
    kld = (ref.exp() * (ref - logp)).sum(-1)
    return dict(kld=kld.tolist(), same=(logp.argmax(-1) == ref.argmax(-1)).tolist(),
                nll=(-logp[rows, targets]).tolist(), ref_nll=(-ref[rows, targets]).tolist())


def summary(parts: list[dict]) -> dict:
    kld = np.concatenate([p["kld"] for p in parts])
    same = np.concatenate([p["same"] for p in parts]).astype(float)
    nll, ref_nll = np.concatenate([p["nll"] for p in parts]), np.concatenate([p["ref_nll"] for p in parts])
    return dict(tokens=len(kld), kld_mean=float(kld.mean()), kld_stderr=float(kld.std() / np.sqrt(len(kld))),
                kld_p99=float(np.percentile(kld, 99)), same_top_pct=float(100 * same.mean()),
                ppl_delta_pct=float(100 * (np.exp(nll.mean() - ref_nll.mean()) - 1)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--first-chunk", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--configs", default="", help="comma-separated names (default: all); 'list' prints them")
    ap.add_argument("--rotate", action="store_true", help="rotate the residual stream first (export/rotation.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(args.tokenizer).encode(Path(args.text).read_text(), add_special_tokens=False).ids
    t0 = time.time()
    probe = Probe(args.source, args.rotate)
    table = configs(probe.layers)
    names = list(table) if not args.configs else args.configs.split(";")
    if names == ["list"]:
        print("\n".join(table))
        return
    first = args.context // 2
    chunks = [ids[c * args.context : (c + 1) * args.context]
              for c in range(args.first_chunk, args.first_chunk + args.chunks)]
    refs = [probe.logprobs(ch, first) for ch in chunks]  # the float model, the source's weights
    print(f"loaded + reference: {time.time() - t0:.0f} s", flush=True)
    results = {}
    out = Path(args.json)
    if out.exists():
        results = json.loads(out.read_text())
    for name in names:
        t = time.time()
        alloc = table[name]
        probe.apply(alloc)
        parts = [score(probe.logprobs(ch, first), ref, torch.tensor(ch[first + 1 :])) for ch, ref in zip(chunks, refs)]
        s = summary(parts)
        s["bytes"] = sum(stored_bytes(probe.shapes[n], b, blk) for n, (b, blk) in alloc.resolved().items())
        s["rotate"] = args.rotate
        results[name + (" (rotated)" if args.rotate else "")] = s
        out.write_text(json.dumps(results, indent=1))
        print(f"{name:40s} same {s['same_top_pct']:6.2f}%  kld {s['kld_mean']:.5f}±{s['kld_stderr']:.5f}  "
              f"ppl {s['ppl_delta_pct']:+.2f}%  {s['bytes'] / 2**30:.3f} GiB  {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
