"""The package on disk: model graph(s) + external data, tokenizer files and a manifest that describes them.

The manifest is the contract between export and runtime: loading checks it, and refuses a package whose
files are missing, resized or changed, or whose format this version cannot read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from .architecture import ArchSpec, spec_problem
from .errors import PackageError
from .external_data import external_data_files
from .graph_contract import (ATTENTION_MASK, CACHE_KINDS, EMBEDS_IN, HIDDEN_IN, HIDDEN_OUT, LOGITS, POSITION_COS,
                             POSITION_SIN, cache_slot)
from .limits import size_problem, spec_sizes

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KiB plus a chat template; more is not one we wrote
# A package file name is one plain name in the package folder: no separator of any platform, no drive or stream
# (":"), no leading dot (".", ".." and hidden files), nothing a shell or Windows would read twice.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


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
    _regular_file(path, "its manifest")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise PackageError(f"{path} has {path.stat().st_size} bytes, more than a manifest holds: the package is damaged, re-export it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise PackageError(
                f"{folder} has package format {data.get('format_version')}, this edgeinfer reads {FORMAT_VERSION}: re-export it"
            )
        return Manifest(**data)
    except PackageError:
        raise
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{path} is damaged ({exc}): re-export the package") from None


def _regular_file(path: Path, what: str) -> os.stat_result:
    """lstat of PATH, refusing a symlink or anything but a plain file: a link would open a file outside the package."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise PackageError(f"{path.parent} is incomplete: {path.name} ({what}) is missing: re-export the package") from None
    if stat.S_ISLNK(info.st_mode) or getattr(info, "st_reparse_tag", 0):
        raise PackageError(f"{path} ({what}) is a link: a package holds its own files; copy the real file in or re-export")
    if not stat.S_ISREG(info.st_mode):
        raise PackageError(f"{path} ({what}) is not a regular file: re-export the package")
    return info


def verify_files(folder: Path, manifest: Manifest, hashes: bool = True) -> None:
    """Sizes always; sha256 too unless the caller opts out (it reads every byte once)."""
    for name, expected in manifest.files.items():
        path = folder / name
        size = _regular_file(path, "listed in the manifest").st_size
        if size != expected["bytes"]:
            raise PackageError(
                f"{folder}/{name} has {size} bytes, the manifest says {expected['bytes']}: the package is damaged, re-export it"
            )
        if hashes and sha256_of(path) != expected["sha256"]:
            raise PackageError(f"{folder}/{name} does not match its sha256 in the manifest: the package is damaged, re-export it")


ACTIVATION_DTYPES = ("float32", "float16")
TARGETS, GRAPH_FLAVOURS = ("cpu", "cuda", "qnn", "openvino"), ("dynamic", "static")
# A static package's host cache may hold the graphs' quantized I/O type (graphs.host.kv_cache gives its encoding).
QUANTIZED_KV_DTYPES = {"uint16": 65535}  # dtype -> its largest zero point
KV_ITEMSIZE = {"float32": 4, "float16": 2, "uint16": 2}


def whole(value, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_manifest(folder: Path, m: Manifest) -> None:
    """The manifest's facts must have the right types and agree with each other, so that a manifest that lies
    is refused here with one line instead of failing later inside onnxruntime. The graph itself is checked
    against the manifest once its session exists (model.py)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise PackageError(f"{folder}/{MANIFEST} is inconsistent: {what}: the package is damaged, re-export it")

    need(isinstance(m.files, dict) and all(
        _plain_name(name) and isinstance(f, dict) and whole(f.get("bytes"), 0) and isinstance(f.get("sha256"), str)
        for name, f in m.files.items()), "files must map plain file names to their bytes and sha256")
    for key in ("architecture", "kv_cache", "graphs", "tokenizer", "export_options", "source"):
        need(isinstance(getattr(m, key), dict), f"{key} must be an object")
    try:
        spec = m.spec
    except TypeError as exc:
        raise PackageError(f"{folder}/{MANIFEST}: architecture is incomplete ({exc}): re-export the package") from None
    problem = size_problem({**spec_sizes(spec), "context_length": m.context_length}) or spec_problem(spec)
    need(problem is None, str(problem))
    need(m.target in TARGETS and m.graph_flavour in GRAPH_FLAVOURS,
         f"target {m.target!r} / graph_flavour {m.graph_flavour!r} are not one of {TARGETS} / {GRAPH_FLAVOURS}")
    need(m.activation_dtype in ACTIVATION_DTYPES, f"activation_dtype {m.activation_dtype!r} is not one of {ACTIVATION_DTYPES}")
    kv = m.kv_cache
    kv_dtypes = (*ACTIVATION_DTYPES, *QUANTIZED_KV_DTYPES) if m.graph_flavour == "static" else ACTIVATION_DTYPES
    need(kv.get("dtype") in kv_dtypes, f"kv_cache dtype {kv.get('dtype')!r} is not one of {kv_dtypes}")
    layouts = ("BNSH", "SH")  # SH: grouped attention (cpu packages; the runner refuses it on a GPU)
    need(kv.get("layout", "BNSH") in layouts, f"kv_cache layout {kv.get('layout')!r} is not one of {layouts}")
    for key, value in (("num_layers", spec.num_layers), ("num_kv_heads", spec.num_kv_heads),
                       ("head_dim", spec.head_dim), ("length", m.context_length)):
        need(kv.get(key) == value, f"kv_cache {key} is {kv.get(key)!r}, the architecture and context say {value}")
    need(kv.get("spare_rows", 0) in (0, 1), f"kv_cache spare_rows {kv.get('spare_rows')!r} is not 0 or 1")
    need(m.export_options.get("context_length", m.context_length) == m.context_length,
         "export_options and context_length disagree")
    if m.graph_flavour == "static":
        _check_static_graphs(m, spec, need)
    tok = m.tokenizer
    keys = ("bos_token_id", "eos_token_ids", "add_bos_token", "chat_template", "chat_format")
    need(all(k in tok for k in keys), f"tokenizer needs {', '.join(keys)}")
    eos, bos = tok["eos_token_ids"], tok["bos_token_id"]
    ids = (eos if isinstance(eos, list) else [None]) + ([] if bos is None else [bos])
    need(all(whole(i, 0) and i < spec.vocab_size for i in ids),
         f"bos/eos token ids must be whole numbers below the vocabulary size {spec.vocab_size}")
    need(isinstance(tok.get("add_bos_token"), bool) and isinstance(tok.get("chat_format"), str)
         and isinstance(tok.get("chat_template"), (str, type(None))), "tokenizer settings have the wrong types")


def static_contexts(m: Manifest) -> list[int]:
    """The contexts a static package has graphs for, rising to its context length (packages from before context
    buckets have that one only)."""
    return m.graphs.get("contexts", [m.context_length])


def _check_static_graphs(m: Manifest, spec: ArchSpec, need) -> None:
    """The structure the static runner walks: roles with token counts and parts, cache names it can bind, host data."""
    names = {f"{way}_{cache_slot(i, kind)}" for way in ("past", "new") for kind in CACHE_KINDS for i in range(spec.num_layers)}
    strings = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
    contexts = static_contexts(m)
    need(isinstance(contexts, list) and all(whole(c) for c in contexts) and contexts == sorted(set(contexts))
         and contexts[-1:] == [m.context_length], "graphs.contexts must list whole numbers rising to the context length")
    buckets = {str(c) for c in contexts[:-1]}
    for role in ("prefill", "decode"):
        entry = m.graphs.get(role)
        need(isinstance(entry, dict) and isinstance(entry.get("tokens"), int) and 1 <= entry["tokens"] <= m.context_length,
             f"graphs.{role} needs a token count within the context")
        parts = entry.get("parts")
        need(isinstance(parts, list) and 1 <= len(parts) <= spec.num_layers and all(isinstance(p, dict) for p in parts),
             f"graphs.{role}.parts must list 1 to {spec.num_layers} parts")
        for part in parts:
            need(isinstance(part.get("file"), str) and strings(part.get("inputs")) and strings(part.get("outputs"))
                 and len(part["inputs"]) >= 4 and len(part["outputs"]) >= 1, f"a {role} part needs a file, inputs and outputs")
            need(set(part["inputs"][4:]) | set(part["outputs"][1:]) <= names, f"a {role} part names a cache tensor the model lacks")
            files = part.get("contexts", {})
            need(isinstance(files, dict) and set(files) == buckets and all(isinstance(f, str) for f in files.values()),
                 f"a {role} part needs a graph file for each smaller context in graphs.contexts")
            host_fed = [POSITION_COS, POSITION_SIN, ATTENTION_MASK]
            need(part["inputs"][0] in (EMBEDS_IN, HIDDEN_IN) and part["inputs"][1:4] == host_fed
                 and part["outputs"][0] in (LOGITS, HIDDEN_OUT),
                 f"a {role} part's inputs start with the hidden state, {POSITION_COS}, {POSITION_SIN} and {ATTENTION_MASK}, "
                 "its outputs with the hidden state or logits")
    host = m.graphs.get("host")
    need(isinstance(host, dict) and isinstance(host.get("embeddings"), dict) and isinstance(host.get("attention_mask"), dict),
         "graphs.host needs embeddings and attention_mask")
    value = host["attention_mask"].get("value")
    need(isinstance(value, (int, float)) and not isinstance(value, bool) and -1e30 < value < 0, "the attention mask value must be negative")
    _check_cache_encoding(host.get("kv_cache"), m.kv_cache.get("dtype"), spec, need)


def _check_cache_encoding(encoding, dtype: str, spec: ArchSpec, need) -> None:
    """graphs.host.kv_cache, present exactly when the cache is quantized: one scale and zero point per cache slot,
    which the runner fills empty slots with and the graphs read the cache by."""
    if dtype not in QUANTIZED_KV_DTYPES:
        need(encoding is None, f"graphs.host.kv_cache gives an encoding for a {dtype} cache, which has none")
        return
    need(isinstance(encoding, dict) and encoding.get("dtype") == dtype,
         f"graphs.host.kv_cache must give the dtype {dtype}, as kv_cache does")
    slots = {cache_slot(i, kind) for kind in CACHE_KINDS for i in range(spec.num_layers)}
    scale, zero = encoding.get("scale"), encoding.get("zero_point")
    need(isinstance(scale, dict) and isinstance(zero, dict) and set(scale) == slots == set(zero),
         "graphs.host.kv_cache must give a scale and a zero point for every cache slot (key.0, value.0, ...) and no other")
    need(all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in scale.values()),
         "graphs.host.kv_cache scales must be finite positive numbers")
    top = QUANTIZED_KV_DTYPES[dtype]
    need(all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top for v in zero.values()),
         f"graphs.host.kv_cache zero points must be whole numbers in 0..{top}")


def _plain_name(name) -> bool:
    # Files live in the package folder itself: a name that climbs out would load something unverified.
    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None


def check_memory(folder: Path, m: Manifest) -> None:
    """Refuse a package whose KV cache cannot fit in this machine's memory before anything is allocated."""
    spec = m.spec
    needed = 2 * spec.num_layers * spec.num_kv_heads * m.context_length * spec.head_dim * KV_ITEMSIZE[m.kv_cache["dtype"]]
    total = psutil.virtual_memory().total
    if needed > total:
        raise PackageError(
            f"{folder}: its KV cache needs {needed / 2**30:.1f} GiB for a context of {m.context_length}, this machine has "
            f"{total / 2**30:.1f} GiB: re-export it with a smaller --context"
        )


class Package:
    """A package folder with its checked manifest: the one gate every file a load opens goes through.

    A file is opened only if it is a plain name listed in manifest.files, a regular file inside the folder (not a
    link), of the listed size; sha256 was checked when the package loaded with verify=True. Graphs are opened only
    if their external data files pass the same gate, so onnxruntime reads nothing the manifest does not list.
    """

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder = folder
        self.manifest = manifest
        self._graph_files: dict[str, list[str]] = {}  # graph -> it and its external data files, once checked

    def file(self, name, what: str) -> Path:
        """The path of NAME, WHAT the load needs it for (named in errors), once it passes the gate."""
        if not _plain_name(name) or name not in self.manifest.files:
            raise PackageError(
                f"{self.folder}: the manifest names {str(name)[:80]!r} as {what}, which is not a file it lists: "
                "the package is damaged or crafted, re-export it"
            )
        path = self.folder / name
        size = _regular_file(path, what).st_size
        if size != self.manifest.files[name]["bytes"]:
            raise PackageError(f"{path} changed size since the package was checked: re-export the package")
        return path

    def graph(self, name, what: str) -> Path:
        """NAME as file() does, plus the same gate for every external data file the graph names."""
        path = self.file(name, what)
        data = sorted(external_data_files(path))
        for location in data:
            self.file(location, f"external data of {name}")
        self._graph_files[name] = [name, *data]
        return path

    def graph_fingerprint(self, name: str) -> str:
        """The sha256 of a graph checked by graph() and of its external data files: what a compiled form depends on."""
        return "/".join(self.manifest.files[file]["sha256"] for file in self._graph_files[name])


def load_package(folder: Path, verify: bool = True) -> Package:
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_manifest(folder, manifest)
    check_memory(folder, manifest)
    verify_files(folder, manifest, hashes=verify)
    return Package(folder, manifest)


def load_manifest(folder: Path, verify: bool = True) -> Manifest:
    return load_package(folder, verify).manifest
