"""Memory-mapped reading of .safetensors files, bf16 included (the safetensors package's numpy API has no bf16).

The format is an 8-byte header length, a JSON header of {name: {dtype, shape, data_offsets}}, then raw data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import SourceError

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
    "I8": np.int8,
}


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > size - 8:
                    raise ValueError("header longer than the file")
                header = json.loads(f.read(header_len))
        except (OSError, ValueError, struct.error) as exc:
            raise SourceError(f"{path} is not a readable safetensors file ({exc}): re-download it") from None
        header.pop("__metadata__", None)
        self.entries = header
        self._data_start = 8 + header_len
        data_end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self._data_start + data_end > size:
            raise SourceError(
                f"{path} is truncated ({size} bytes, its header needs {self._data_start + data_end}): re-download it"
            )
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if size else None

    def names(self) -> list[str]:
        return list(self.entries)

    def tensor(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise SourceError(f"{self.path}: tensor {name} has dtype {entry['dtype']}, which edgeinfer cannot read")
        begin, end = entry["data_offsets"]
        raw = self._map[self._data_start + begin : self._data_start + end]
        return raw.view(dtype).reshape(entry["shape"])
