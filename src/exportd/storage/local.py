"""A local directory as storage: writes go to a temporary name and are renamed into place."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from exportd.storage import Composed, Piece, Span

CHUNK = 1 << 20


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError("storage key escapes the storage root")
        return path

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def open_read(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with open(self._path(key), "rb") as fh:
            fh.seek(start)
            return fh.read(max(0, end - start))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix)
        if not path.exists():
            return 0
        count = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path, ignore_errors=True)
        return count

    def list(self, prefix: str) -> Iterator[str]:
        path = self._path(prefix)
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    yield p.relative_to(self.root).as_posix()

    def compose(self, key: str, pieces: Sequence[Piece]) -> Composed:
        digest = hashlib.sha256()
        total = 0
        with self.open_write(key) as out:
            for piece in pieces:
                if isinstance(piece, bytes):
                    chunks: Iterator[bytes] = iter([piece])
                elif isinstance(piece, Span):
                    chunks = _chunks(self._path(piece.key), piece.start, piece.end)
                else:
                    chunks = _chunks(self._path(piece))
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    total += len(chunk)
        return Composed(total, digest.hexdigest())

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, expires_in: int, filename: str, media_type: str) -> None:
        return None  # the server streams local files itself

    def abort_uploads(self, prefix: str = "", older_than: float = 0.0) -> int:
        return 0  # writes are atomic renames: nothing is left half uploaded


def _chunks(path: Path, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start if end is not None else None
        while chunk := fh.read(CHUNK if left is None else min(CHUNK, left)):
            yield chunk
            if left is not None:
                left -= len(chunk)
    if left:
        raise OSError(f"{path.name} is shorter than the span composed from it")
