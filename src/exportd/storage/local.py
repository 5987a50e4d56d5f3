"""A local directory as storage: writes go to a temporary name and are renamed into place."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
    def open_write(self, key: str, durable: bool = True) -> Iterator[BinaryIO]:
        """`durable`: on disk (fsync) before the name appears. Parts are not: they are
        inputs of the assembly, which checks their sizes against their committed index
        (a part lost to an OS crash fails the assembly, never shortens the file), and
        skipping their fsync saves a write-back wait per partition."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                if durable:
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
        """The pieces are copied by the kernel (`copy_file_range`: no byte crosses into
        Python) while a second thread hashes the same page-cached bytes: the two run on
        two cores, and the copy never waits for the hash."""
        sources: list[bytes | _Range] = [self._source(p) for p in pieces]
        hashed = _Sha256Thread(sources)
        hashed.start()
        total = 0
        try:
            with self.open_write(key) as out:
                for src in sources:
                    if isinstance(src, bytes):
                        out.write(src)
                        total += len(src)
                    else:
                        out.flush()
                        total += _copy_file(src, out.fileno())
        finally:
            hashed.join()
        return Composed(total, hashed.hexdigest())

    def _source(self, piece: Piece) -> bytes | _Range:
        if isinstance(piece, bytes):
            return piece
        if isinstance(piece, Span):
            return _Range(self._path(piece.key), piece.start, piece.end)
        return _Range(self._path(piece), 0, None)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, expires_in: int, filename: str, media_type: str) -> None:
        return None  # the server streams local files itself

    def abort_uploads(self, prefix: str = "", older_than: float = 0.0) -> int:
        return 0  # writes are atomic renames: nothing is left half uploaded


@dataclass(frozen=True)
class _Range:
    """Bytes [start, end) of a file; `end` None: to its end."""

    path: Path
    start: int
    end: int | None

    def length(self, fh: BinaryIO) -> int:
        size = os.fstat(fh.fileno()).st_size
        if self.end is None:
            return size - self.start
        if self.end > size:
            raise OSError(f"{self.path.name} is shorter than the span composed from it")
        return self.end - self.start


def _copy_file(src: _Range, dst_fd: int) -> int:
    """Append `src` to `dst_fd` inside the kernel; plain reads where that is refused."""
    copied = 0
    with open(src.path, "rb") as fh:
        size = src.length(fh)
        try:
            while copied < size:
                n = os.copy_file_range(
                    fh.fileno(), dst_fd, size - copied, offset_src=src.start + copied
                )
                if n == 0:
                    break
                copied += n
        except OSError:  # a file system without it (or across devices on old kernels)
            fh.seek(src.start + copied)
            while copied < size and (chunk := fh.read(min(CHUNK, size - copied))):
                os.write(dst_fd, chunk)
                copied += len(chunk)
    return copied


class _Sha256Thread(threading.Thread):
    """sha256 of the concatenation of bytes and files, read into one reused buffer;
    file reads and hashlib both release the GIL."""

    def __init__(self, sources: Sequence[bytes | _Range]) -> None:
        super().__init__(name="sha256", daemon=True)
        self.sources, self.digest = sources, hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        buf = bytearray(4 * CHUNK)
        view = memoryview(buf)
        try:
            for src in self.sources:
                if isinstance(src, bytes):
                    self.digest.update(src)
                    continue
                with open(src.path, "rb", buffering=0) as fh:
                    left = src.length(fh)
                    fh.seek(src.start)
                    while left and (n := fh.readinto(view[: min(len(buf), left)])):
                        self.digest.update(view[:n])
                        left -= n
        except BaseException as exc:  # handed to the caller by hexdigest()
            self.error = exc

    def hexdigest(self) -> str:
        if self.error is not None:
            raise self.error
        return self.digest.hexdigest()
