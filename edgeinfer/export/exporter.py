"""`edgeinfer export`: weights source -> graph(s) -> package on disk, atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__
from ..errors import ExportError
from ..chat import chat_format_name
from ..graph_contract import GENAI_CONFIG, GENAI_DECODER
from ..package import MANIFEST, Manifest, describe_files
from .atomic import STAGING_MARKER, raise_disk_error, staging_dir
from .destination import check_destination
from .onnx_writer import GraphWriter
from .options import DEFAULT_CONTEXT, ExportOptions
from .open_source import open_source, source_location
from .sources import FiniteWeights, TokenizerFiles, WeightSource


def export(source: str | WeightSource, out: str | Path, options: ExportOptions = ExportOptions(),
           force: bool = False, progress: bool = True, follow_symlinks: bool = False) -> Manifest:
    """Export SOURCE to a package folder OUT; returns its manifest. FOLLOW_SYMLINKS: read a checkpoint folder's
    files even where they link outside it (see HFFolderSource)."""
    out = Path(out)
    location = source_location(source) if isinstance(source, str) else None
    check_destination(out, force, location)  # before reading any weights: refusing should be instant
    opened = open_source(source, follow_symlinks) if isinstance(source, str) else source
    weights = FiniteWeights(opened)
    spec = weights.spec
    chosen = options.for_model(spec.max_position_embeddings)
    if progress:
        how = "--context" if options.context_length else f"the default: at most {DEFAULT_CONTEXT}, the model's limit"
        print(f"context {chosen.context_length} tokens ({how}; the model has {spec.max_position_embeddings} positions)")
    options = chosen
    if options.graph_flavour == "dynamic":
        from .dynamic_graph import with_exact_speculation

        options = with_exact_speculation(weights, options)
    started = time.perf_counter()
    try:
        with staging_dir(out, force, location) as tmp:
            graphs = _build_graphs(weights, options, tmp, progress)
            tokenizer = weights.tokenizer()
            _write_tokenizer(tmp, tokenizer)
            manifest = Manifest(
                architecture=spec.to_dict(),
                precision=options.precision,
                target=options.target,
                graph_flavour=options.graph_flavour,
                context_length=options.context_length,
                activation_dtype=options.activation_dtype,
                kv_cache={
                    "layout": graphs.pop("kv_layout", "BNSH"),
                    "dtype": graphs.pop("kv_dtype"),
                    "num_layers": spec.num_layers,
                    "num_kv_heads": spec.num_kv_heads,
                    "head_dim": spec.head_dim,
                    "length": options.context_length,
                    # rows the buffer holds beyond the context (dynamic_graph.spare_cache_rows)
                    "spare_rows": graphs.pop("kv_spare_rows", 0),
                },
                graphs=graphs,
                tokenizer={
                    "bos_token_id": tokenizer.bos_token_id,
                    "eos_token_ids": tokenizer.eos_token_ids,
                    "add_bos_token": tokenizer.add_bos_token,
                    "chat_template": tokenizer.chat_template,
                    "chat_format": chat_format_name(tokenizer.chat_template),
                },
                export_options=options.to_dict(),
                source={"description": weights.description, "random_weights": weights.random_weights,
                        "keeps_source_blocks": keeps_source_blocks(weights, options)},
                edgeinfer_version=__version__,
            )
            if serves_genai(options):  # the folder is also an onnxruntime-genai model folder
                _write_genai_files(tmp, manifest, options)
            names = sorted(p.name for p in tmp.iterdir() if p.name != STAGING_MARKER)
            manifest.files = describe_files(tmp, names)
            (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    except OSError as exc:
        raise_disk_error(exc, out)
    if progress:
        size = manifest.total_bytes / 2**20
        print(f"exported {weights.description} -> {out} ({size:.0f} MiB, {time.perf_counter() - started:.1f} s)")
    return manifest


def keeps_source_blocks(weights: WeightSource, options: ExportOptions) -> bool:
    """Whether every layer matmul keeps the source's own blocks (a lossless GGUF import), what `edgeinfer eval`
    names the package by; a float GGUF is a GGUF too, and is quantized."""
    if options.precision != "w4a16" or options.graph_flavour == "static":
        return False
    from .dynamic_graph import quantizes_from_floats

    return not quantizes_from_floats(weights, options)


def _build_graphs(weights: WeightSource, options: ExportOptions, folder: Path, progress: bool) -> dict:
    if options.graph_flavour == "static":
        from .static_graph import build_static_graphs

        return build_static_graphs(weights, options, folder, progress)
    from ..graph_contract import dynamic_io
    from .dynamic_graph import (DynamicDecoderGraph, cache_layout, has_greedy_output, has_logits_start,
                                quantizes_from_floats, spare_cache_rows)

    statistics = None
    if options.activation_aware and not weights.random_weights and quantizes_from_floats(weights, options):
        from .linear_calibration import CalibratedInputs, collect_linear_inputs

        statistics = CalibratedInputs(*collect_linear_inputs(weights, options, folder, progress=progress))
    writer = GraphWriter(folder / "model.onnx.data")
    try:
        DynamicDecoderGraph(writer, weights, options, statistics).build(progress)
        writer.save(folder / "model.onnx", producer=f"edgeinfer {__version__}")
    finally:
        writer.close()
    io = dynamic_io(weights.spec.num_layers, has_greedy_output(options), has_logits_start(options))
    return {"decoder": {"file": "model.onnx", **io},
            "kv_dtype": options.activation_dtype, "kv_layout": cache_layout(options),
            "kv_spare_rows": spare_cache_rows(options)}


def serves_genai(options: ExportOptions) -> bool:
    """Whether the package is also an onnxruntime-genai model folder: dynamic graphs with genai's cache layout
    (BNSH, past and present one buffer). Static (qnn, openvino) graphs and the grouped attention's row cache are not."""
    return options.graph_flavour == "dynamic" and options.attention != "grouped"


def _write_genai_files(folder: Path, manifest: Manifest, options: ExportOptions) -> None:
    from .genai_config import genai_config
    from .genai_graph import write_genai_graph

    write_genai_graph(folder / manifest.graphs["decoder"]["file"], folder / GENAI_DECODER, options.all_logits)
    (folder / GENAI_CONFIG).write_text(json.dumps(genai_config(manifest), indent=2), encoding="utf-8")


def _write_tokenizer(folder: Path, tokenizer: TokenizerFiles) -> None:
    (folder / "tokenizer.json").write_text(tokenizer.tokenizer_json, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer.tokenizer_config(), indent=2, ensure_ascii=False), encoding="utf-8"
    )
