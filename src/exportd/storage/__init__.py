"""Where output lands. A storage is a small interface over keys (`a/b/c.csv`) and bytes;
exportd ships a local directory and an S3-compatible implementation.

Both ride out transient errors (connections refused or reset, timeouts, 5xx, throttling;
on a local disk a network file system's timeouts) on the outage budget, and name what
they could not get past: `StorageUnavailable` (the storage could not be reached within
the budget: the work is handed back for later, it is not a failed attempt) and
`StorageFull` (no space or quota left)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from exportd.errors import ExportdError, Unavailable
from exportd.retrying import ride_out

T = TypeVar("T")


class StorageUnavailable(Unavailable):
    """The storage could not be reached within the outage budget; the unit of work is
    handed back for later without counting as a failed attempt."""

    error_code = "STORAGE_UNAVAILABLE"


class StorageFull(ExportdError):
    """The storage refused a write for lack of space or quota (ENOSPC, EDQUOT, an S3
    quota): trying again at once would not help."""

    status_code = 507
    error_code = "STORAGE_FULL"


def riding_out(
    call: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    budget: float,
    what: str,
) -> T:
    """`call()` retried while its errors are transient, for `budget` seconds; then a
    `StorageUnavailable` that names only the kind of error (never an address)."""
    try:
        return ride_out(call, transient=transient, budget=budget, what=what)
    except Exception as exc:
        if transient(exc):
            raise StorageUnavailable(
                f"the storage could not be reached for {budget:.0f} s "
                f"({what}: {type(exc).__name__})"
            ) from exc
        raise


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def is_temporary(key: str) -> bool:
    """A local storage's write in progress (`.name.<12 hex>.tmp`), or one a crash left."""
    return bool(_TEMPORARY.match(key.rsplit("/", 1)[-1]))


@dataclass(frozen=True)
class StoredObject:
    """A key found by `scan`, with the time it was last written."""

    key: str
    modified: datetime


@dataclass(frozen=True)
class OpenUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class Composed:
    """What `compose` wrote: the final object's size and sha256."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class Copied:
    """What a copy into the storage wrote: the object's size and sha256."""

    bytes: int
    sha256: str


class SourceUnreadable(ExportdError):
    """The file to copy in could not be opened or read (missing, no permission, not a
    file): an error of that file, not of the storage."""

    error_code = "SOURCE_FILE_UNREADABLE"


class CountingWriter:
    """A binary sink that counts what passes through it (enough of the io protocol for
    io.TextIOWrapper and pyarrow's output streams)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def write(self, data: Any) -> int:
        """Any bytes-like object (bytes, memoryview, a pyarrow Buffer), never copied."""
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self._raw.write(data)
        self.count += n
        return n

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        """Leaves the underlying stream open: its owner (the storage) closes it."""
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.count

    @property
    def closed(self) -> bool:
        return False


class HashingWriter(CountingWriter):
    """A counting sink that also hashes (sha256) what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)
        self._sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        self._sha.update(data)
        return super().write(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) of a stored object: a piece of `compose` that is part of one."""

    key: str
    start: int
    end: int


Piece = bytes | str | Span  # inline bytes, the key of a stored part, or a span of one


class Storage(Protocol):
    def open_write(self, key: str, durable: bool = True) -> AbstractContextManager[BinaryIO]:
        """Write an object; it exists under `key` only once the block exits without error."""
        ...

    def open_read(self, key: str) -> BinaryIO: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (a folder-like key ending in '/')."""
        ...

    def list(self, prefix: str) -> Iterator[str]: ...

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (fewer when it is shorter)."""
        ...

    def compose(self, key: str, pieces: Sequence[Piece]) -> Composed:
        """Write `key` as the concatenation of `pieces`, atomically (never half visible)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A path on this host's disk for the object, when the storage is local."""
        ...

    def presigned_url(
        self, key: str, expires_in: int, filename: str, media_type: str
    ) -> str | None:
        """A URL that reads the object without credentials for `expires_in` seconds, when
        the storage can mint one (S3); None when the server must stream it (local)."""
        ...

    def abort_uploads(self, prefix: str = "", older_than: float = 0.0) -> int:
        """Abort unfinished multipart uploads under `prefix` older than `older_than` seconds."""
        ...

    def scan(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object under `prefix` with its modification time (temporary files too)."""
        ...

    def uploads(self, prefix: str = "") -> Iterator[OpenUpload]:
        """The multipart uploads open under `prefix` (none on a local disk)."""
        ...

    def abort_upload(self, upload: OpenUpload) -> None: ...

    def probe(self, key: str) -> None:
        """One lookup of `key`, not ridden out (readiness): `StorageUnavailable` at once
        when the storage cannot be reached."""
        ...

    def put_file(self, key: str, source: Path | int) -> Copied:
        """Copy a local file (a path, or a descriptor open for reading, left open) in
        under `key`, hashed on the way (read once on a local disk, an upload on S3). An
        object already under `key` is only ever replaced whole; a new one may be seen
        under `key` while it is written on a local disk (its caller records it as done
        only afterwards, and makes a batch durable with the storage's `sync`). A file
        that cannot be read raises `SourceUnreadable`, and nothing is left under `key`."""
        ...

    def copy(self, source_key: str, key: str) -> Copied:
        """Copy an object of this storage to `key` inside the storage (a kernel copy on
        a local disk, a server-side CopyObject on S3)."""
        ...


_CONTROL = re.compile(r"[\x00-\x1f]")


def check_key(key: str) -> str:
    """A storage key is relative and '/'-separated, with no empty, '.' or '..' segment;
    a trailing '/' names a folder-like prefix."""
    segments = key[:-1].split("/") if key.endswith("/") else key.split("/")
    if (
        not key
        or "\\" in key
        or _CONTROL.search(key) is not None
        or any(s in ("", ".", "..") for s in segments)
    ):
        raise ValueError(f"invalid storage key {key[:200]!r}")
    return key


class MissingExtra(RuntimeError):
    """A storage whose optional dependencies are not installed (names the extra)."""


def open_storage(url: str, outage_budget: float = 120.0) -> Storage:
    """A storage from its URL: `file:///path` (or a plain path), or
    `s3://bucket/prefix?endpoint_url=...&region=...`; transient errors are ridden out
    for `outage_budget` seconds."""
    from exportd.storage.local import LocalStorage

    if url.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return LocalStorage(Path(unquote(urlparse(url).path)), outage_budget)
    if url.startswith("s3://"):
        try:
            from exportd.storage.s3 import S3Storage
        except ModuleNotFoundError as exc:  # an optional extra, not installed
            if exc.name not in ("boto3", "botocore"):
                raise
            raise MissingExtra("S3 storage needs boto3: pip install 'exportd[s3]'") from None
        return S3Storage.from_url(url, outage_budget)
    if "://" not in url:
        return LocalStorage(Path(url), outage_budget)
    raise ValueError(f"unsupported storage URL scheme: {url.split('://', 1)[0]!r}")
