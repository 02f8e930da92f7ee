"""Which reader a source string names: `preset:NAME`, a .gguf file, a Hugging Face folder, or a hub id."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SourceError
from .gguf_source import GGUFSource
from .hf_source import HFFolderSource, download_from_hub, hub_repo_root
from .presets import PresetSource
from .sources import WeightSource


def open_source(source: str, follow_symlinks: bool = False) -> WeightSource:
    """Pick the reader for SOURCE: `preset:NAME`, a .gguf file, a Hugging Face folder, or a hub id.
    A folder's files that link outside it are refused unless FOLLOW_SYMLINKS (see HFFolderSource)."""
    if source.startswith("preset:"):
        return PresetSource(source.removeprefix("preset:"))
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SourceError(f"GGUF file {source} does not exist: check the path")
        return GGUFSource(path)
    if path.exists():
        if path.is_dir():
            return HFFolderSource(path, follow_symlinks=follow_symlinks)
        raise SourceError(f"{source} is neither a folder nor a .gguf file: pass a Hugging Face folder, a .gguf file or preset:NAME")
    if _is_hub_id(source):
        snapshot = download_from_hub(source)
        return HFFolderSource(snapshot, root=hub_repo_root(snapshot), follow_symlinks=follow_symlinks)
    raise SourceError(
        f"source {source} does not exist: pass a Hugging Face folder, a .gguf file, preset:NAME, or a hub id ORG/NAME"
    )


def source_location(source: str) -> Path | None:
    """The file or folder on this machine that SOURCE is read from (a hub id: its repo's cache folder), so an
    export can refuse to write over it before opening it; None for presets."""
    if source.startswith("preset:"):
        return None
    path = Path(source).expanduser()
    if path.exists() or path.suffix == ".gguf" or not _is_hub_id(source):
        return path
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}"


def _is_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not source.startswith((".", "/", "~"))
