"""A local directory as storage: writes go to a temporary name and are renamed into place.

A local disk may be a network file system: its timeouts and lost connections are
transient (ridden out on the outage budget where the operation can simply be redone,
`StorageUnavailable` otherwise); no space or quota left is `StorageFull`."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from exportd.errors import first_line
from exportd.storage import (
    Composed,
    Copied,
    OpenUpload,
    Piece,
    SourceUnreadable,
    Span,
    StorageFull,
    StorageUnavailable,
    StoredObject,
    check_key,
    riding_out,
)

CHUNK = 1 << 20
T = TypeVar("T")

TRANSIENT_ERRNOS = frozenset(
    {
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.ESTALE,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
    }
)
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _outage(exc: BaseException) -> bool:
    """Transient: an unreachable file system's error, raw or already named so."""
    return isinstance(exc, StorageUnavailable) or transient(exc)


def transient(exc: BaseException) -> bool:
    """An error that a file system on the network gives while it is unreachable."""
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


@contextmanager
def named_errors(unreachable: bool = True) -> Iterator[None]:
    """OS errors that name a cause of their own become `StorageFull` (no space, quota)
    or, with `unreachable`, `StorageUnavailable` (a network file system that does not
    answer; not around a caller's own code, whose errors may be its source's)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise StorageFull(f"the storage is full: {first_line(exc)}") from exc
        if unreachable and transient(exc):
            raise StorageUnavailable(f"the storage is unavailable: {first_line(exc)}") from exc
        raise


class LocalStorage:
    def __init__(self, root: Path, outage_budget: float = 120.0) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.budget = outage_budget

    def _again(self, what: str, call: Callable[[], T]) -> T:
        """An operation that may simply be redone, ridden out over transient errors."""
        with named_errors():
            return riding_out(call, transient=transient, budget=self.budget, what=what)

    def redo_on_outage(self, call: Callable[[], T], what: str) -> T:
        """`call()`: a batch of writes to this storage that may simply be redone whole,
        ridden out as one over the storage's transient errors (one wrapper for the
        batch, not one per file)."""
        with named_errors():
            return riding_out(call, transient=_outage, budget=self.budget, what=what)

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
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        with named_errors():
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with named_errors(unreachable=False), open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            with named_errors():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def open_read(self, key: str) -> BinaryIO:
        return self._again("open", lambda: open(self._path(key), "rb"))

    def put_file(self, key: str, source: Path | int) -> Copied:
        """The file copied to `key`: a new file written in place (no temporary name, no
        rename: no one reads it as complete before the copy's caller records it), a file
        already there (an earlier attempt's) replaced whole through a temporary name; a
        small file in one read hashed from that same buffer, a large one inside the
        kernel (`os.copy_file_range`) and hashed from the page cache. What a failed
        copy wrote is removed. Not fsynced: its caller makes a batch of copies durable at
        once (`sync`; the samples kind before its partition commits). `source`: a path,
        or a file already open (its descriptor stays the caller's). The key is checked
        as a string: resolving each of many small files' paths would cost more than
        copying them. A symlink at the key is replaced, never followed."""
        if isinstance(source, int):
            return self._fill(os.path.join(self.root, check_key(key)), source)
        try:
            src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceUnreadable(f"{Path(source).name}: {exc.strerror}") from None
        try:
            return self._fill(os.path.join(self.root, check_key(key)), src)
        finally:
            os.close(src)

    def copy(self, source_key: str, key: str) -> Copied:
        return self.put_file(key, self._path(source_key))

    def _fill(self, path: str, src: int) -> Copied:
        with named_errors():
            dst, tmp = _create(path)
        done = False
        try:
            with named_errors():
                copied = _copy_hashing(src, dst)
                os.close(dst)
                dst = -1
                if tmp is not None:
                    os.replace(tmp, path)
                done = True
            return copied
        finally:
            if dst >= 0:
                os.close(dst)
            if not done:
                with suppress(OSError):
                    os.unlink(path if tmp is None else tmp)

    def sync(self) -> None:
        """Everything written to this storage's file system so far on disk: one
        `syncfs(2)` of it (every file of a batch in one wait, where an fsync per file
        would wait for each); `os.sync()` where syncfs is not available."""
        with named_errors():
            _syncfs(str(self.root))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        def read() -> bytes:
            with open(self._path(key), "rb") as fh:
                fh.seek(start)
                return fh.read(max(0, end - start))

        return self._again("read", read)

    def exists(self, key: str) -> bool:
        return self._again("stat", self._path(key).is_file)

    def size(self, key: str) -> int:
        return self._again("stat", lambda: self._path(key).stat().st_size)

    def delete(self, key: str) -> None:
        self._again("delete", lambda: self._path(key).unlink(missing_ok=True))

    def delete_prefix(self, prefix: str) -> int:
        """Every file under the folder, then its empty folders; an error other than a
        file already gone propagates (the cleanup is tried again, never half-believed)."""
        return self._again("delete", lambda: _remove_tree(self._path(prefix)))

    def list(self, prefix: str) -> Iterator[str]:
        return iter(self._again("list", lambda: [o.key for o in self._scan(prefix, False)]))

    def scan(self, prefix: str = "") -> Iterator[StoredObject]:
        return iter(self._again("list", lambda: self._scan(prefix)))

    def _scan(self, prefix: str, stat: bool = True) -> Sequence[StoredObject]:
        return _scan_tree(self.root, self._path(prefix) if prefix else self.root, stat)

    def probe(self, key: str) -> None:
        with named_errors():
            self._path(key).is_file()

    def uploads(self, prefix: str = "") -> Iterator[OpenUpload]:
        return iter(())  # writes are atomic renames: nothing is left half uploaded

    def abort_upload(self, upload: OpenUpload) -> None:
        return None

    def compose(self, key: str, pieces: Sequence[Piece]) -> Composed:
        """The pieces are copied by the kernel (`copy_file_range`: no byte crosses into
        Python) while a second thread hashes the same page-cached bytes: the two run on
        two cores, and the copy never waits for the hash."""
        return self._again("compose", lambda: self._compose(key, pieces))

    def _compose(self, key: str, pieces: Sequence[Piece]) -> Composed:
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


def _scan_tree(root: Path, path: Path, stat: bool = True) -> list[StoredObject]:
    """The files under `path` (keys relative to `root`, in path order), with their
    modification times (`stat`; else the epoch: `list` needs the keys only). Walked with
    `os.scandir` (file types from the directory entries, no stat per file to tell
    files from folders): a samples export's tree of 100,000 files is listed by its
    cleanup in a fraction of a second. As `Path.rglob("*")` did: hidden files included,
    symlinked folders not descended into, a symlink to a file listed."""
    found: list[StoredObject] = []
    if path.is_dir():
        rel = "" if path == root else path.relative_to(root).as_posix()
        _walk(str(path), rel, stat, found)
    found.sort(key=lambda o: o.key.split("/"))
    return found


_EPOCH = datetime.fromtimestamp(0, UTC)


def _walk(top: str, rel: str, stat: bool, out: list[StoredObject]) -> None:
    prefix = rel + "/" if rel else ""
    try:
        it = os.scandir(top)
    except (FileNotFoundError, NotADirectoryError):  # deleted while being listed
        return
    with it:
        for e in it:
            try:
                if e.is_dir():
                    if not e.is_symlink():
                        _walk(e.path, prefix + e.name, stat, out)
                    continue
                if not e.is_file():
                    continue
                modified = datetime.fromtimestamp(e.stat().st_mtime, UTC) if stat else _EPOCH
            except FileNotFoundError:  # deleted while being listed
                continue
            out.append(StoredObject(prefix + e.name, modified))


def _remove_tree(path: Path) -> int:
    """Delete the files under `path` (or `path` itself), then the folders left empty."""
    if path.is_file():
        path.unlink(missing_ok=True)
        return 1
    if not path.is_dir():
        return 0
    count = 0
    for top, dirs, names in os.walk(path, topdown=False):
        for name in names:
            Path(top, name).unlink(missing_ok=True)
            count += 1
        for name in dirs:
            _rmdir(Path(top, name))
    _rmdir(path)
    return count


def _rmdir(path: Path) -> None:
    with suppress(FileNotFoundError):
        path.rmdir()


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


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _create(path: str) -> tuple[int, str | None]:
    """`path` open for writing: created new in place (its folder too, the first time),
    no temporary name: no one can read it as complete before its writer says so. When
    something is there already (an earlier attempt's file, whole or half; a symlink,
    never followed: O_EXCL), a temporary beside it instead, renamed over it once
    complete: a file that is there is only ever replaced whole. (fd, temporary or
    None)."""
    try:
        return os.open(path, _CREATE, 0o644), None
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            return os.open(path, _CREATE, 0o644), None
        except FileExistsError:
            pass
    except FileExistsError:
        pass
    head, name = os.path.split(path)
    tmp = f"{head}/.{name}.{secrets.token_hex(6)}.tmp"
    return os.open(tmp, _CREATE, 0o644), tmp


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syncfs.argtypes = [ctypes.c_int]
        return lib
    except (OSError, AttributeError):  # not Linux/glibc: os.sync() instead
        return None


_LIBC = _libc()


SMALL_FILE = 1 << 20  # read once into memory: hashed and written from the same bytes


def _copy_hashing(src: int, dst: int) -> Copied:
    """Copy an open file into another and hash it: small files from one buffer, large
    ones inside the kernel and hashed from the page cache the copy just filled."""
    try:
        size = os.fstat(src).st_size
        data = os.read(src, SMALL_FILE + 1) if size <= SMALL_FILE else b""
    except OSError as exc:
        raise SourceUnreadable(f"the file cannot be read: {exc.strerror}") from None
    if size <= SMALL_FILE and len(data) <= SMALL_FILE:
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view) :]
        return Copied(len(data), hashlib.sha256(data).hexdigest())
    copied = _copy_file(_Range(Path(f"/proc/self/fd/{src}"), 0, None), dst)
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(src, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return Copied(copied, digest.hexdigest())


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
