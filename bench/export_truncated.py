"""Export the first LAYERS layers of a checkpoint (plus its real final norm, lm_head, embeddings and tokenizer): a
small model with the real model's activation structure, for numerics work that a full export makes slow.

    python bench/export_truncated.py SOURCE LAYERS OUT [--target qnn] [--precision w4a16] [--context 1024] [--set gptq=False ...]

The logits of a truncation are not language (perplexity ~1e5), but every layer it keeps sees the inputs it sees in
the full model: per-layer SQNR and device-vs-device agreement read the same there (bench/results/qnn-numerics-*.md).
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import replace

from edgeinfer.export.exporter import export
from edgeinfer.export.open_source import open_source
from edgeinfer.export.options import ExportOptions


class FirstLayers:
    """SOURCE with its spec cut to LAYERS layers: the exporter then asks only for those layers' tensors."""

    def __init__(self, source, layers: int):
        if not 0 < layers <= source.spec.num_layers:
            raise SystemExit(f"--layers {layers}: the model has {source.spec.num_layers}")
        self.source = source
        self.spec = replace(source.spec, num_layers=layers, layer_types=source.spec.layer_types[:layers])
        self.description = f"{source.description} (first {layers} of {source.spec.num_layers} layers)"
        self.random_weights = source.random_weights

    def tensor(self, name):
        return self.source.tensor(name)

    def stored_bits(self, name):
        return self.source.stored_bits(name)

    def exact_blocks(self, name):
        return self.source.exact_blocks(name)

    def tokenizer(self):
        return self.source.tokenizer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("layers", type=int)
    parser.add_argument("out")
    parser.add_argument("--target", default="qnn")
    parser.add_argument("--precision", default="w4a16")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                        help="any other ExportOptions field, e.g. gptq=False or context_buckets=()")
    args = parser.parse_args()
    extra = {key: ast.literal_eval(value) for key, value in (item.split("=", 1) for item in args.set)}
    options = ExportOptions(precision=args.precision, target=args.target, context_length=args.context, **extra)
    export(FirstLayers(open_source(args.source), args.layers), args.out, options, force=True)


if __name__ == "__main__":
    main()
