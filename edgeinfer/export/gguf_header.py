"""A bounds check of a GGUF file's header, run before gguf.GGUFReader parses it.

GGUFReader trusts every count and length in the header: it loops over an array's claimed length and makes
a numpy view per element, so a 1 KiB file that claims a 2^40-element array grows memory until the kernel
kills the process. This walks the same header (GGUF v2/v3) with each count checked against the bytes left
in the file and against caps far above real files, and checks that every tensor lies inside the file.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from ..errors import SourceError

# Value types of the GGUF spec: scalar type -> bytes; 8 is a string, 9 an array.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MIN_BYTES = {_STRING: 8, _ARRAY: 12}  # the length prefix(es) of an empty string or array

# Real files hold ~30-60 keys and ~15 tensors per layer (1024 layers at most, limits.py). A 262k vocabulary's
# tokens, types, scores and merges are ~1M array items; GGUFReader spends ~100 bytes of memory on each.
MAX_KEYS = 1 << 16
MAX_TENSORS = 1 << 16
MAX_ARRAY_ITEMS = 1 << 23
MAX_DIMS = 4
SUPPORTED_VERSIONS = (2, 3)


def check_gguf_header(path: Path) -> None:
    """Raise a one-line SourceError if PATH's header claims more than the file holds."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise _broken(path, f"it has {size} bytes, less than a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _HeaderScan(path, data).run()


def _broken(path: Path, what: str) -> SourceError:
    return SourceError(f"{path} is not a valid GGUF file: {what}: re-download it from a source you trust")


class _HeaderScan:
    def __init__(self, path: Path, data: mmap.mmap):
        self.path, self.data, self.pos = path, data, 0
        self.order = "<"
        self.items = 0  # array items seen so far, against MAX_ARRAY_ITEMS
        self.alignment = 32

    def run(self) -> None:
        if self.data[:4] != b"GGUF":
            raise self.error("it does not start with the GGUF magic bytes")
        (version,) = struct.unpack_from("<I", self.data, 4)
        if version & 0xFFFF == 0:  # written on a big-endian machine, as GGUFReader detects it
            self.order, version = ">", struct.unpack_from(">I", self.data, 4)[0]
        if version not in SUPPORTED_VERSIONS:
            raise self.error(f"GGUF version {version} is not one edgeinfer reads (2 or 3)")
        self.pos = 8
        tensor_count = self.count("tensor count", MAX_TENSORS, min_bytes=24)
        key_count = self.count("metadata key count", MAX_KEYS, min_bytes=13)
        for _ in range(key_count):
            key = self.string("a metadata key").decode("utf-8", "replace")
            value_type = self.uint("I", f"the type of {key}")
            if key == "general.alignment" and value_type == _UINT32:
                self.alignment = struct.unpack_from(self.order + "I", self.data, self.pos)[0] or 32
            self.value(value_type, key, depth=0)
        extents = [self.tensor_info() for _ in range(tensor_count)]
        data_start = -(-self.pos // self.alignment) * self.alignment
        for name, offset, nbytes in extents:
            if data_start + offset + nbytes > len(self.data):
                raise self.error(
                    f"tensor {name} claims bytes {data_start + offset}..{data_start + offset + nbytes}, "
                    f"the file has {len(self.data)}"
                )

    def error(self, what: str) -> SourceError:
        return _broken(self.path, what)

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, nbytes: int, what: str) -> int:
        if nbytes > self.left():
            raise self.error(f"{what} needs {nbytes} bytes, the file has {self.left()} left")
        start, self.pos = self.pos, self.pos + nbytes
        return start

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack_from(self.order + fmt, self.data, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, cap: int, min_bytes: int) -> int:
        """A count from the header, refused above CAP or when its items cannot fit in the bytes left."""
        n = self.uint("Q", what)
        if n > cap:
            raise self.error(f"its {what} is {n}, above the {cap} edgeinfer accepts")
        if n * min_bytes > self.left():
            raise self.error(f"its {what} is {n}, more than the {self.left()} bytes left in the file can hold")
        return n

    def string(self, what: str) -> bytes:
        length = self.uint("Q", f"the length of {what}")
        return self.data[self.take(length, f"{what} ({length} bytes long)") : self.pos]

    def value(self, value_type: int, key: str, depth: int) -> None:
        if value_type in _SCALAR_BYTES:
            self.take(_SCALAR_BYTES[value_type], f"the value of {key}")
        elif value_type == _STRING:
            self.string(f"the value of {key}")
        elif value_type == _ARRAY and depth < 2:
            item_type = self.uint("I", f"the item type of {key}")
            item_bytes = _SCALAR_BYTES.get(item_type) or _MIN_BYTES.get(item_type)
            if item_bytes is None:
                raise self.error(f"{key} is an array of unknown type {item_type}")
            n = self.count(f"array length of {key}", MAX_ARRAY_ITEMS - self.items, min_bytes=item_bytes)
            self.items += n
            if item_type in _SCALAR_BYTES:
                self.take(n * item_bytes, f"the items of {key}")
            else:
                for _ in range(n):
                    self.value(item_type, key, depth + 1)
        else:
            raise self.error(f"{key} has value type {value_type}, which is not a GGUF type (or nests too deep)")

    def tensor_info(self) -> tuple[str, int, int]:
        """One tensor's (name, offset into the data section, bytes)."""
        import gguf

        name = self.string("a tensor name").decode("utf-8", "replace")
        n_dims = self.uint("I", f"the dimension count of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.error(f"tensor {name} has {n_dims} dimensions, GGUF allows 1 to {MAX_DIMS}")
        elements = 1
        for _ in range(n_dims):
            elements *= self.uint("Q", f"the shape of {name}")
        kind = self.uint("I", f"the type of {name}")
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise self.error(f"tensor {name} has unknown type {kind}") from None
        if elements % block:
            raise self.error(f"tensor {name} has {elements} elements, not whole blocks of {block}")
        offset = self.uint("Q", f"the offset of {name}")
        return name, offset, elements // block * block_bytes
