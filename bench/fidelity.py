"""W4A16 fidelity on real weights: top-1 next-token agreement and perplexity against transformers.

Both sides use the same weights: transformers dequantizes the GGUF to fp32 (its own GGUF loader), edgeinfer
exports the same GGUF (dequantized by the gguf package) to a W4A16 package. The text is real: Python standard
library source and the CPython license prose, tokenized with the GGUF's own tokenizer.

    python bench/fidelity.py weights/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --positions 1024
(bash bench/fetch_real_weights.sh makes that file)
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from edgeinfer.verify import log_softmax


def real_text() -> str:
    license_path = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "LICENSE.txt"
    prose = license_path.read_text(encoding="utf-8")[:6000] if license_path.exists() else ""
    return inspect.getsource(textwrap) + "\n\n" + prose


def ours_logits(package: Path, ids: list[int], chunk: int = 128) -> np.ndarray:
    import edgeinfer

    model = edgeinfer.load(package, verify=False)
    runner = model.engine.new_runner()
    rows = [runner.forward(np.array(ids[i : i + chunk]), i, all_rows=True) for i in range(0, len(ids), chunk)]
    return np.concatenate(rows)


def reference_logits(gguf: Path, ids: list[int], chunk: int = 256) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False).logits[0]
    return out.numpy()


def report(ours: np.ndarray, ref: np.ndarray, ids: list[int]) -> dict:
    targets = np.array(ids[1:])
    nll = lambda logits: -log_softmax(logits[:-1])[np.arange(len(targets)), targets]  # noqa: E731
    ppl_ours, ppl_ref = float(np.exp(nll(ours).mean())), float(np.exp(nll(ref).mean()))
    ref_log, ours_log = log_softmax(ref), log_softmax(ours)
    kl = (np.exp(ref_log) * (ref_log - ours_log)).sum(-1)  # KL(reference || ours) per position, as llama-perplexity
    return {
        "positions": len(ids),
        "top1_agreement": float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        "perplexity_w4a16": ppl_ours,
        "perplexity_fp32_reference": ppl_ref,
        "perplexity_delta_pct": 100 * (ppl_ours / ppl_ref - 1),
        "kl_divergence_mean": float(kl.mean()),
        "kl_divergence_p99": float(np.percentile(kl, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--package", type=Path, default=Path("/tmp/edgeinfer-fidelity-w4a16"))
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--accuracy-level", type=int, default=4)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--uniform-bits", action="store_true", help="4 bits everywhere (no 8-bit v/down)")
    parser.add_argument("--float-embeddings", action="store_true")
    parser.add_argument("--lm-head-bits", type=int, default=8)
    parser.add_argument("--no-activation-aware", action="store_true", help="round to nearest (the export before issue 19)")
    parser.add_argument("--no-gptq", action="store_true", help="activation-aware scales, rounded to nearest")
    parser.add_argument("--embedding-block-size", type=int, default=32, help="128: the table as before issue 19")
    parser.add_argument("--reference-cache", type=Path, help="reuse transformers' logits saved here (.npy)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions
    from edgeinfer.package import load_package
    from edgeinfer.tokenizer import TextTokenizer

    options = ExportOptions(precision="w4a16", context_length=max(2048, args.positions), all_logits=True,
                            block_size=args.block_size, accuracy_level=args.accuracy_level,
                            symmetric=args.symmetric, mixed_bits=not args.uniform_bits, quantize_embeddings=not args.float_embeddings,
                            lm_head_bits=args.lm_head_bits, activation_aware=not args.no_activation_aware,
                            gptq=not args.no_gptq, embedding_block_size=args.embedding_block_size)
    started = time.perf_counter()
    export(str(args.gguf), args.package, options, force=True)
    export_s = time.perf_counter() - started
    tokenizer = TextTokenizer.from_package(load_package(args.package, verify=False), None, False)
    ids = tokenizer.encode(real_text())[: args.positions]
    ours = ours_logits(args.package, ids)
    if args.reference_cache and args.reference_cache.exists():
        ref = np.load(args.reference_cache)
    else:
        ref = reference_logits(args.gguf, ids)
        if args.reference_cache:
            np.save(args.reference_cache, ref)
    size = sum(f.stat().st_size for f in args.package.iterdir() if f.is_file())
    result = {"gguf": str(args.gguf), "export_s": export_s, "package_bytes": size, "options": options.to_dict(),
              **report(ours, ref, ids)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
