"""GGUF files: the magic check and a small self-contained header reader.

The format is a key/value table followed by tensor descriptors; reading it here needs no
llama.cpp context, and `gguf` stays a test-only dependency. The header is read through
mmap: a 1 GB file costs only the pages of its metadata. Measured on the 1.5B target,
0.23 s against gguf.GGUFReader's 13.6 s. One load reads each file's header once: the
compatibility check and the weight placement share it (session.load_models).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specli.errors import ModelError

GGUF_MAGIC = b"GGUF"

# GGUF value types -> struct format (scalars); 8 is a string, 9 an array.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# Large arrays whose values nothing here needs: skipped, not decoded.
_SKIP_VALUES = frozenset({"tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.precompiled_charsmap"})



def check_gguf(path: Path) -> Path:
    """`path` if it is a readable file starting with the GGUF magic; ModelError naming it otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise _unreadable(path, e) from None
    if magic != GGUF_MAGIC:
        raise _not_gguf(path)
    return path


def _not_gguf(path: Path) -> ModelError:
    return ModelError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")


def _unreadable(path: Path, e: OSError) -> ModelError:
    """The one-line error for a GGUF file that cannot be opened or read."""
    if isinstance(e, FileNotFoundError):
        return ModelError(f"{path}: no such file")
    if isinstance(e, IsADirectoryError):
        return ModelError(f"{path}: is a directory, not a GGUF file")
    if isinstance(e, PermissionError):
        return ModelError(f"{path}: permission denied")
    return ModelError(f"{path}: cannot read ({e.strerror or e})")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor descriptor: name, ggml type id, dimensions (ne[0] first, as ggml)."""

    name: str
    ggml_type: int
    dims: tuple[int, ...]


@dataclass
class GGUFHeader:
    """The metadata table of a GGUF file and, when asked for, its tensor descriptors."""

    path: Path
    version: int
    n_tensors: int
    kv: dict[str, Any]
    file_size: int
    n_params: int | None = None  # sum of tensor element counts (only when tensors were read)
    tensors: list[TensorInfo] | None = None  # descriptors (only when tensors were read)

    @property
    def architecture(self) -> str | None:
        return self.kv.get("general.architecture")

    def arch_key(self, suffix: str) -> Any:
        """`{architecture}.{suffix}`, e.g. arch_key("context_length")."""
        return self.kv.get(f"{self.architecture}.{suffix}")


class _Cursor:
    """Sequential little-endian reads over a buffer; a short buffer means a truncated file."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise ModelError(f"{self.path}: truncated or corrupt GGUF header") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, decode: bool = True) -> str | None:
        n = self.unpack("<Q")
        end = self.pos + n
        if end > len(self.buf):
            raise ModelError(f"{self.path}: truncated or corrupt GGUF header")
        raw = self.buf[self.pos : end] if decode else None
        self.pos = end
        # surrogateescape keeps invalid UTF-8 byte-exact, so token texts compare exactly.
        return raw.decode("utf-8", "surrogateescape") if raw is not None else None

    def value(self, vtype: int, decode: bool = True) -> Any:
        if vtype == _STRING:
            return self.string(decode)
        if vtype == _ARRAY:
            return self.array(decode)
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise ModelError(f"{self.path}: corrupt GGUF header (unknown value type {vtype})")
        return self.unpack(fmt)

    def array(self, decode: bool) -> list[Any] | None:
        etype, count = self.unpack("<I"), self.unpack("<Q")
        fmt = _SCALAR_FORMATS.get(etype)
        if fmt is not None:  # numeric array: one unpack for all of it
            size = struct.calcsize(fmt) * count
            if self.pos + size > len(self.buf):
                raise ModelError(f"{self.path}: truncated or corrupt GGUF header")
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos)) if decode else None
            self.pos += size
            return values
        return [self.value(etype, decode) for _ in range(count)] if decode else self._skip(etype, count)

    def _skip(self, etype: int, count: int) -> None:
        for _ in range(count):
            self.value(etype, decode=False)
        return None


def read_gguf(path: str | Path, *, tensors: bool = False) -> GGUFHeader:
    """Parse the GGUF header of `path` (metadata always, tensor descriptors if `tensors`).

    Raises ModelError naming the file when it is missing, unreadable, not a GGUF or
    truncated. No weights are read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size < 24 or f.read(4) != GGUF_MAGIC:
                raise _not_gguf(path)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path, size, tensors)
    except OSError as e:
        raise _unreadable(path, e) from None


def _parse(buf: mmap.mmap, path: Path, size: int, tensors: bool) -> GGUFHeader:
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise ModelError(f"{path}: unsupported GGUF version {version} (only 2 and 3 are read)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        kv[key] = cur.value(cur.unpack("<I"), decode=key not in _SKIP_VALUES)
    header = GGUFHeader(path=path, version=version, n_tensors=n_tensors, kv=kv, file_size=size)
    if tensors:
        header.tensors = _read_tensors(cur, n_tensors)
        header.n_params = sum(math.prod(t.dims) for t in header.tensors)
    return header


def _read_tensors(cur: _Cursor, n_tensors: int) -> list[TensorInfo]:
    out = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
        ggml_type = cur.unpack("<I")
        cur.unpack("<Q")  # data offset
        out.append(TensorInfo(name, ggml_type, dims))
    return out
