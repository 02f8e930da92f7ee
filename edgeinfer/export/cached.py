"""Packages made on demand: a source named where a package is expected is exported once into the cache and reused.

`edgeinfer run preset:tiny-qwen2` and `edgeinfer bench` take a package folder or any export source.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import __version__
from ..cache_dir import cache_root
from ..errors import ExportError, PackageError
from ..package import MANIFEST, load_manifest
from .exporter import export
from .options import ExportOptions
from .presets import DEFAULT_PRESET


def resolve_package(model: str | None, target: str, precision: str = "w4a16", context: int | None = None,
                    progress: bool = True) -> Path:
    """A package path for MODEL: as is if it is one, else exported once into the cache and reused.
    CONTEXT None: the exporter's default (4096, or the model's limit if smaller)."""
    if model and (Path(model) / MANIFEST).is_file():
        return Path(model)
    source = model or f"preset:{DEFAULT_PRESET}"
    slug = "".join(c if c.isalnum() or c in "-." else "_" for c in source.removeprefix("preset:"))[-80:]
    folder = cache_root() / "packages" / f"{slug}-{target}-{precision}-c{context or 'auto'}-v{__version__}"
    options = ExportOptions(precision=precision, target=target, context_length=context)
    try:
        manifest = load_manifest(folder, verify=False)  # sizes checked here; sha256 when the model loads
        # The options as the export resolved them (context, the target's block size) against what it recorded.
        expected = replace(options, context_length=context or manifest.context_length).for_model(manifest.spec.max_position_embeddings)
        # exact_speculation is decided from the weights (dynamic_graph.with_exact_speculation): the recorded choice
        expected = replace(expected, exact_speculation=manifest.export_options.get("exact_speculation"))
        if manifest.export_options == expected.to_dict():
            return folder
    except (PackageError, ExportError):
        pass  # missing, stale or damaged: export again
    if progress:
        print(f"exporting {source} for {target} ({precision}) into the cache {folder}")
    export(source, folder, options, force=True, progress=progress)
    return folder
