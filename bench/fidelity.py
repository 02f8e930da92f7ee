"""W4A16 fidelity on real weights: export a GGUF to a W4A16 package, then `edgeinfer eval` it against a float
reference of the same file (transformers dequantizes the GGUF to float32, or pass --reference PKG, e.g. an fp32 export).

    python bench/fidelity.py weights/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf [--requantize --block-size 32]
(bash bench/fetch_real_weights.sh makes that file). The figures are edgeinfer.eval's: llama-perplexity's chunking
(--context 512, second halves scored), perplexity, same top token, KL divergence.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeinfer.eval import DEFAULT_CHUNKS, DEFAULT_CONTEXT, evaluate
from edgeinfer.export.exporter import export
from edgeinfer.export.options import ExportOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--package", type=Path, default=Path("/tmp/edgeinfer-fidelity-w4a16"))
    parser.add_argument("--reference", type=Path, help="a float package of the same GGUF (default: the GGUF in transformers)")
    parser.add_argument("--requantize", action="store_true", help="dequantize and quantize again (default: the GGUF's own blocks)")
    parser.add_argument("--block-size", type=int, default=128, help="with --requantize")
    parser.add_argument("--accuracy-level", type=int, default=4)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--uniform-bits", action="store_true", help="4 bits everywhere (no 8-bit v/down)")
    parser.add_argument("--float-embeddings", action="store_true")
    parser.add_argument("--lm-head-bits", type=int, default=8)
    parser.add_argument("--rounding", default="nearest", choices=["gptq", "search", "nearest"],
                        help="with --requantize: activation-aware (gptq, search) or round to nearest (the export before issue 19)")
    parser.add_argument("--embedding-block-size", type=int, help="with --requantize (default: --block-size)")
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT)
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    options = ExportOptions(precision="w4a16", context_length=max(1024, args.context), block_size=args.block_size,
                            accuracy_level=args.accuracy_level, symmetric=args.symmetric, requantize=args.requantize,
                            mixed_bits=not args.uniform_bits, quantize_embeddings=not args.float_embeddings,
                            lm_head_bits=args.lm_head_bits, activation_aware=args.rounding != "nearest",
                            gptq=args.rounding == "gptq", embedding_block_size=args.embedding_block_size)
    started = time.perf_counter()
    export(str(args.gguf), args.package, options, force=True)
    export_s = time.perf_counter() - started
    report = evaluate(args.package, reference=args.reference or args.gguf, context=args.context, chunks=args.chunks)
    print(report.markdown())
    result = {"gguf": str(args.gguf), "export_s": export_s, "options": options.to_dict(), **report.to_dict()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
