"""gzip and zstd for the text formats. Every segment of a part (and every piece the
coordinator adds: a header, a separator) is a complete gzip member or zstd frame, so the
pieces concatenate into one valid stream, which is what both formats specify."""

from __future__ import annotations

import zlib
from typing import Any, BinaryIO, Protocol

from exportd.errors import BadRequest

CODECS = ("none", "gzip", "zstd")
SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}
MEDIA_TYPES = {"gzip": "application/gzip", "zstd": "application/zstd"}


class Sink(Protocol):
    def write(self, data: bytes) -> Any: ...

    def close(self) -> None:
        """End the member/frame; the underlying stream stays open."""
        ...


class Plain:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: bytes) -> Any:
        if data:
            self._out.write(data)

    def close(self) -> None:
        self._out.flush()


def _compressor(codec: str) -> Any:
    """A fresh compressor of one gzip member (level 6) or zstd frame (level 3)."""
    if codec == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip header and trailer
    import zstandard

    return zstandard.ZstdCompressor(level=3).compressobj()


class Compressing:
    """Writes one member/frame of `codec` to `out`; `close` ends it."""

    def __init__(self, out: BinaryIO, codec: str) -> None:
        self._out = out
        self._z = _compressor(codec)

    def write(self, data: bytes) -> Any:
        if chunk := self._z.compress(data):
            self._out.write(chunk)

    def close(self) -> None:
        self._out.write(self._z.flush())
        self._out.flush()


def check_codec(name: str | None) -> str:
    codec = name or "none"
    if codec not in CODECS:
        raise BadRequest(
            f"unknown compression {codec[:20]!r}; use one of {', '.join(CODECS)}",
            "INVALID_COMPRESSION",
        )
    return codec


def sink(codec: str, out: BinaryIO) -> Sink:
    return Plain(out) if codec == "none" else Compressing(out, codec)


def compress(codec: str, data: bytes) -> bytes:
    """`data` as one complete member/frame of `codec` (as is for none)."""
    if codec == "none" or not data:
        return data
    z = _compressor(codec)
    return bytes(z.compress(data) + z.flush())
