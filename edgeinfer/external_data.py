"""Which files an ONNX graph reads its external data from, found without the onnx library.

A package's .onnx file names its weight files inside the protobuf (TensorProto.external_data "location").
The loader lets onnxruntime open only files the manifest lists, so it reads those names first. Importing
onnx for this would cost every load a few hundred milliseconds; the walk below reads only the protobuf
fields that can hold a tensor (initializers, sparse initializers, node attributes, subgraphs, functions)
and skips everything else by its length.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from .errors import PackageError

# message -> {field number: message it holds}, from onnx.proto3. Fields not listed are skipped.
_SCHEMA = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_MAX_DEPTH = 64  # subgraphs nest; a deeper file is crafted, not exported


class _Malformed(ValueError):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field number, start, stop) of each length-delimited field in buf[pos:end]; other wire types skipped."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("a field runs past its message")
            yield field, pos, pos + length
            pos += length
        else:
            raise _Malformed(f"wire type {wire}")
    if pos > end:
        raise _Malformed("a field runs past its message")


def _locations(buf, kind: str, pos: int, end: int, depth: int, found: set[str]) -> None:
    if depth > _MAX_DEPTH:
        raise _Malformed("subgraphs nest too deep")
    if kind == "entry":  # StringStringEntryProto: key = 1, value = 2
        entry = {field: bytes(buf[start:stop]) for field, start, stop in _fields(buf, pos, end)}
        if entry.get(1) == b"location":
            found.add(entry.get(2, b"").decode("utf-8", "replace"))
        return
    children = _SCHEMA[kind]
    for field, start, stop in _fields(buf, pos, end):
        if field in children:
            _locations(buf, children[field], start, stop, depth + 1, found)


def external_data_files(path: Path) -> set[str]:
    """The external data locations named anywhere in the ONNX model at PATH (as written, not resolved)."""
    found: set[str] = set()
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise _Malformed("empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _locations(buf, "model", 0, len(buf), 0, found)
    except (_Malformed, RecursionError) as exc:
        raise PackageError(f"{path} is not a valid ONNX model ({exc}): the package is damaged, re-export it") from None
    return found
