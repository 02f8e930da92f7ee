"""The package on disk: model graph(s) + external data, tokenizer files and a manifest that describes them.

The manifest is the contract between export and runtime: loading checks it, and refuses a package whose
files are missing, resized or changed, or whose format this version cannot read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .architecture import ArchSpec
from .errors import PackageError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    architecture: dict
    precision: str
    target: str
    graph_flavour: str  # "dynamic" (cpu/cuda) or "static" (qnn)
    context_length: int
    activation_dtype: str
    kv_cache: dict  # layout, dtype, num_layers, num_kv_heads, head_dim, length
    graphs: dict  # role ("decoder" or "prefill"/"decode") -> {file, inputs, outputs, ...}
    tokenizer: dict  # bos_token_id, eos_token_ids, add_bos_token, chat_template, chat_format
    export_options: dict
    source: dict  # description, random_weights
    files: dict = field(default_factory=dict)  # name -> {bytes, sha256}
    edgeinfer_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def spec(self) -> ArchSpec:
        return ArchSpec.from_dict(self.architecture)

    @property
    def total_bytes(self) -> int:
        return sum(f["bytes"] for f in self.files.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path, names: list[str]) -> dict:
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)} for name in names}


def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    if not folder.exists():
        raise PackageError(f"package {folder} does not exist: export one with `edgeinfer export SOURCE -o {folder}`")
    path = folder / MANIFEST
    if not path.is_file():
        raise PackageError(f"{folder} is not an edgeinfer package (no {MANIFEST}): export it with `edgeinfer export`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            raise PackageError(
                f"{folder} has package format {data.get('format_version')}, this edgeinfer reads {FORMAT_VERSION}: re-export it"
            )
        return Manifest(**data)
    except PackageError:
        raise
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{path} is damaged ({exc}): re-export the package") from None


def verify_files(folder: Path, manifest: Manifest, hashes: bool = True) -> None:
    """Sizes always; sha256 too unless the caller opts out (it reads every byte once)."""
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise PackageError(f"{folder} is incomplete: {name} is missing: re-export the package")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise PackageError(
                f"{folder}/{name} has {size} bytes, the manifest says {expected['bytes']}: the package is damaged, re-export it"
            )
        if hashes and sha256_of(path) != expected["sha256"]:
            raise PackageError(f"{folder}/{name} does not match its sha256 in the manifest: the package is damaged, re-export it")


def load_manifest(folder: Path, verify: bool = True) -> Manifest:
    manifest = read_manifest(Path(folder))
    verify_files(Path(folder), manifest, hashes=verify)
    return manifest
