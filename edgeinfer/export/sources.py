"""Weight sources: everything the exporter can read, behind one small interface.

A source yields float32 tensors under Hugging Face names and layout ([out, in] for linear weights),
one at a time, so the exporter never holds more than one layer's weights in memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..architecture import ArchSpec
from ..errors import SourceError


@dataclass
class TokenizerFiles:
    """What a package needs to tokenize and chat: file texts plus the ids generation stops on."""

    tokenizer_json: str
    chat_template: str | None
    bos_token_id: int | None
    eos_token_ids: list[int]
    add_bos_token: bool = False
    special_tokens: dict[str, str] = field(default_factory=dict)  # role (bos/eos/pad) -> token text

    def tokenizer_config(self) -> dict:
        config = {"add_bos_token": self.add_bos_token, "chat_template": self.chat_template}
        config.update({f"{role}_token": text for role, text in self.special_tokens.items()})
        return config


class WeightSource(Protocol):
    spec: ArchSpec
    description: str  # for the manifest: what was exported
    random_weights: bool

    def tensor(self, name: str) -> np.ndarray:
        """The float32 tensor under its Hugging Face name."""

    def tokenizer(self) -> TokenizerFiles:
        """Tokenizer and chat template files for the package."""


class FiniteWeights:
    """A source whose tensors are checked on the way to the exporter: NaN or inf in a checkpoint would
    otherwise become a package that quietly generates noise (4-bit quantization turns them into -inf or
    zero logits, which the sampler cannot tell from real ones)."""

    def __init__(self, source: WeightSource):
        self.source = source
        self.spec, self.description, self.random_weights = source.spec, source.description, source.random_weights

    def tensor(self, name: str) -> np.ndarray:
        array = self.source.tensor(name)
        # min and max carry NaN and inf through without a temporary as large as the tensor.
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise SourceError(
                f"{self.description}: tensor {name} holds NaN or inf values: the checkpoint is damaged, "
                "restore or re-download it"
            )
        return array

    def tokenizer(self) -> TokenizerFiles:
        return self.source.tokenizer()


def open_source(source: str, follow_symlinks: bool = False) -> WeightSource:
    """Pick the reader for SOURCE: `preset:NAME`, a .gguf file, a Hugging Face folder, or a hub id.
    A folder's files that link outside it are refused unless FOLLOW_SYMLINKS (see HFFolderSource)."""
    from .gguf_source import GGUFSource
    from .hf_source import HFFolderSource, download_from_hub, hub_repo_root
    from .presets import PresetSource

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


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}: restore the file from the original checkpoint") from None
