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


ACTIVATION_DTYPES = ("float32", "float16")


def check_manifest(folder: Path, m: Manifest) -> None:
    """The manifest's facts must have the right types and agree with each other, so that a manifest that lies
    is refused here with one line instead of failing later inside onnxruntime. The graph itself is checked
    against the manifest once its session exists (model.py)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise PackageError(f"{folder}/{MANIFEST} is inconsistent: {what}: the package is damaged, re-export it")

    def whole(value, low: int = 1) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    need(isinstance(m.files, dict) and all(
        _plain_name(name) and isinstance(f, dict) and whole(f.get("bytes"), 0) and isinstance(f.get("sha256"), str)
        for name, f in m.files.items()), "files must map plain file names to their bytes and sha256")
    for key in ("architecture", "kv_cache", "graphs", "tokenizer", "export_options", "source"):
        need(isinstance(getattr(m, key), dict), f"{key} must be an object")
    try:
        spec = m.spec
    except TypeError as exc:
        raise PackageError(f"{folder}/{MANIFEST}: architecture is incomplete ({exc}): re-export the package") from None
    sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size")
    need(all(whole(getattr(spec, k)) for k in sizes), "architecture sizes must be whole numbers > 0")
    need(whole(m.context_length), f"context_length must be a whole number > 0, not {m.context_length!r}")
    need(m.activation_dtype in ACTIVATION_DTYPES, f"activation_dtype {m.activation_dtype!r} is not one of {ACTIVATION_DTYPES}")
    kv = m.kv_cache
    need(kv.get("dtype") in ACTIVATION_DTYPES, f"kv_cache dtype {kv.get('dtype')!r} is not one of {ACTIVATION_DTYPES}")
    for key, value in (("num_layers", spec.num_layers), ("num_kv_heads", spec.num_kv_heads),
                       ("head_dim", spec.head_dim), ("length", m.context_length)):
        need(kv.get(key) == value, f"kv_cache {key} is {kv.get(key)!r}, the architecture and context say {value}")
    need(m.export_options.get("context_length", m.context_length) == m.context_length,
         "export_options and context_length disagree")
    tok = m.tokenizer
    keys = ("bos_token_id", "eos_token_ids", "add_bos_token", "chat_template", "chat_format")
    need(all(k in tok for k in keys), f"tokenizer needs {', '.join(keys)}")
    eos, bos = tok["eos_token_ids"], tok["bos_token_id"]
    ids = (eos if isinstance(eos, list) else [None]) + ([] if bos is None else [bos])
    need(all(whole(i, 0) and i < spec.vocab_size for i in ids),
         f"bos/eos token ids must be whole numbers below the vocabulary size {spec.vocab_size}")
    need(isinstance(tok.get("add_bos_token"), bool) and isinstance(tok.get("chat_format"), str)
         and isinstance(tok.get("chat_template"), (str, type(None))), "tokenizer settings have the wrong types")


def _plain_name(name) -> bool:
    # Files live in the package folder itself: a name that climbs out would load something unverified.
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def load_manifest(folder: Path, verify: bool = True) -> Manifest:
    manifest = read_manifest(Path(folder))
    check_manifest(Path(folder), manifest)
    verify_files(Path(folder), manifest, hashes=verify)
    return manifest
