"""S3-compatible object storage through boto3.

Objects are written whole (a PUT is atomic on S3, so nobody sees half an object). The
single output file is assembled by `compose` as one multipart upload whose parts are
server-side copies of the committed part objects (UploadPartCopy), merged where they are
too small: S3 wants every part but the last to be at least 5 MiB and at most 10,000 parts.
See `Assembly` for the plan and for how the sha256 of the result is computed."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast
from urllib.parse import parse_qs, quote, unquote, urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

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

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_PART = 5 * 1024 * 1024  # S3: every part but the last
MAX_PART = 5 * 1024**3  # S3: the largest part (and the largest single copy)
MAX_PARTS = 10_000  # S3: parts per upload
TARGET_PARTS = 9_000  # leave room: parts grow with the file so they never pass MAX_PARTS
CHUNK = 1 << 20
SPOOL = 8 * 1024 * 1024  # a write is kept in memory up to this size, then on local disk

# what S3 and S3-compatible servers answer while they are overloaded or restarting
BUSY_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "XMinioServerNotInitialized",
    }
)
# quota-style refusals (MinIO's full disk and bucket quota, Ceph RGW's quota)
FULL_CODES = frozenset(
    {"XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "QuotaExceeded", "StorageFull"}
)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _missing(exc: ClientError) -> bool:
    return _code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


def _full(exc: ClientError) -> bool:
    return _code(exc) in FULL_CODES or _status(exc) == 507


def transient(exc: BaseException) -> bool:
    """An error of an endpoint that cannot be reached now: no connection, a connection
    lost or timed out, a 5xx or a throttling answer. Never a 4xx about the request."""
    if isinstance(exc, ClientError):
        return not _full(exc) and (
            _code(exc) in BUSY_CODES or _status(exc) >= 500 or _status(exc) == 429
        )
    return isinstance(
        exc,
        HTTPClientError
        | BotoConnectionError
        | IncompleteReadError
        | ConnectionError
        | TimeoutError,
    )


class S3Storage:
    """A bucket, and a prefix inside it under which every key of exportd lives."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        min_part: int = MIN_PART,
        outage_budget: float = 120.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.min_part = min_part
        self.budget = outage_budget
        self._transfer = TransferConfig(max_concurrency=4, multipart_threshold=SPOOL)

    @classmethod
    def from_url(cls, url: str, outage_budget: float = 120.0) -> S3Storage:
        """`s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=eu-west-1`;
        credentials come from the usual AWS environment variables (or instance roles).
        botocore's own retries cover a blip within one call; `_call` rides out longer
        outages on the budget."""
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError("an s3:// storage URL needs a bucket: s3://bucket/prefix")
        opts = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        endpoint = opts.get("endpoint_url")
        style = opts.get("addressing_style", "path" if endpoint else "auto")
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=opts.get("region"),
            config=Config(
                s3={"addressing_style": style},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                signature_version="s3v4",
            ),
        )
        return cls(parsed.netloc, unquote(parsed.path), client, outage_budget=outage_budget)

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """One request (or a few that may simply be redone together), ridden out over
        transient errors for the outage budget; quota refusals become `StorageFull`."""
        try:
            return riding_out(call, transient=transient, budget=self.budget, what=f"S3 {what}")
        except ClientError as exc:
            if _full(exc):
                raise StorageFull(f"the storage refused the write: {_code(exc)}") from exc
            raise

    # ---- objects -----------------------------------------------------------------------

    @contextmanager
    def open_write(self, key: str, durable: bool = True) -> Iterator[BinaryIO]:
        """Spool the object (memory, then local disk) and PUT it once the block exits."""
        target = self._k(key)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL) as buf:
            yield cast(BinaryIO, buf)

            def upload() -> None:
                buf.seek(0)
                try:
                    self.client.upload_fileobj(
                        _KeepOpen(buf), self.bucket, target, Config=self._transfer
                    )
                except Exception:
                    self._forget_uploads(target)
                    raise

            self._call("upload", upload)

    def _forget_uploads(self, target: str) -> None:
        """After a failed upload: abort the multipart upload the transfer may have left
        open on this very key (best effort; the cleanup and the sweeper catch the rest)."""
        try:
            reply = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=target)
            for up in reply.get("Uploads", []):
                if up["Key"] == target:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=target, UploadId=up["UploadId"]
                    )
        except Exception as exc:
            log.debug("could not abort the uploads of %s yet: %s", target, type(exc).__name__)

    def open_read(self, key: str) -> BinaryIO:
        try:
            reader = _ObjectReader(self, self._k(key), 0, None)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise
        return cast(BinaryIO, io.BufferedReader(reader, CHUNK))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""

        def read() -> bytes:
            obj = self.client.get_object(
                Bucket=self.bucket, Key=self._k(key), Range=f"bytes={start}-{end - 1}"
            )
            body = obj["Body"]
            try:
                return cast(bytes, body.read())
            finally:
                body.close()

        try:
            return self._call("get", read)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._call(
                "head", lambda: self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            )
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return head

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def put_file(self, key: str, source: Path | int) -> Copied:
        """A local file uploaded under `key`: a small one from one buffer (hashed from
        it), a large one hashed first, then uploaded by the transfer manager."""
        name = f"/proc/self/fd/{source}" if isinstance(source, int) else str(source)
        try:
            with open(source, "rb", closefd=not isinstance(source, int)) as fh:
                size = os.fstat(fh.fileno()).st_size
                data = fh.read() if size <= SPOOL else None
                digest = hashlib.sha256(data) if data is not None else _hash_file(fh)
        except OSError as exc:
            raise SourceUnreadable(f"{os.path.basename(name)}: {exc.strerror}") from None
        target = self._k(key)
        if data is not None:
            body = data
            self._call(
                "put", lambda: self.client.put_object(Bucket=self.bucket, Key=target, Body=body)
            )
            return Copied(len(data), digest.hexdigest())
        self._call(
            "upload",
            lambda: self.client.upload_file(name, self.bucket, target, Config=self._transfer),
        )
        return Copied(size, digest.hexdigest())

    def same_service(self, other: S3Storage) -> bool:
        """Whether a server-side copy can reach `other`'s objects (one endpoint)."""
        return bool(self.client.meta.endpoint_url == other.client.meta.endpoint_url)

    def copy_from(self, other: S3Storage, source_key: str, key: str) -> Copied:
        """A server-side copy of another S3 storage's object (on the same service)."""
        return self._copy({"Bucket": other.bucket, "Key": other._k(source_key)}, key)

    def copy(self, source_key: str, key: str) -> Copied:
        return self._copy({"Bucket": self.bucket, "Key": self._k(source_key)}, key)

    def _copy(self, src: dict[str, str], key: str) -> Copied:
        """A server-side CopyObject (the bytes never leave the storage) asking S3 for
        the copy's SHA-256 checksum; where the service gives none, the object is read
        back to hash it. Objects over 5 GiB (a single copy's limit) are not supported."""
        reply = self._call(
            "copy",
            lambda: self.client.copy_object(
                Bucket=self.bucket, Key=self._k(key), CopySource=src, ChecksumAlgorithm="SHA256"
            ),
        )
        checksum = reply.get("CopyObjectResult", {}).get("ChecksumSHA256")
        size = self.size(key)
        if checksum:
            return Copied(size, base64.b64decode(checksum).hex())
        with self.open_read(key) as fh:
            return Copied(size, _hash_file(fh).hexdigest())

    def probe(self, key: str) -> None:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as exc:
            if _missing(exc):
                return
            if transient(exc):
                raise StorageUnavailable(f"the storage cannot be reached ({_code(exc)})") from exc
            raise
        except Exception as exc:
            if transient(exc):
                raise StorageUnavailable(
                    f"the storage cannot be reached ({type(exc).__name__})"
                ) from exc
            raise

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self._call(
            "delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
        )

    def delete_prefix(self, prefix: str) -> int:
        """Delete the objects under `prefix` and abort any upload still open there."""
        self.abort_uploads(prefix)
        keys = [self._k(k) for k in self.list(prefix)]
        self._delete_keys(keys)
        return len(keys)

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete these objects (1,000 to a request)."""
        self._delete_keys([self._k(k) for k in keys])

    def _delete_keys(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]

            def delete(objects: list[dict[str, str]] = batch) -> None:
                reply = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                if errors := reply.get("Errors"):  # per key: the request itself succeeded
                    raise OSError(f"{len(errors)} objects not deleted: {errors[0].get('Code')}")

            self._call("delete", delete)

    def list(self, prefix: str) -> Iterator[str]:
        return iter([o.key for o in self.scan(prefix)])

    def scan(self, prefix: str = "") -> Iterator[StoredObject]:
        def pages() -> list[StoredObject]:
            paginator = self.client.get_paginator("list_objects_v2")
            return [
                StoredObject(obj["Key"][len(self.prefix) :], obj["LastModified"])
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
                for obj in page.get("Contents", [])
            ]

        return iter(self._call("list", pages))

    def local_path(self, key: str) -> None:
        return None

    def presigned_url(self, key: str, expires_in: int, filename: str, media_type: str) -> str:
        """A URL that reads the object without credentials until it expires."""
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._k(key),
                "ResponseContentDisposition": f"attachment; filename*=UTF-8''{quote(filename)}",
                "ResponseContentType": media_type,
            },
            ExpiresIn=max(1, int(expires_in)),
        )
        return url

    # ---- multipart uploads -----------------------------------------------------------------

    def open_uploads(self, prefix: str = "") -> Iterator[tuple[str, str, datetime]]:
        """(key, upload id, initiated) of the multipart uploads still open under `prefix`."""
        for up in self.uploads(prefix):
            yield up.key, up.upload_id, up.initiated

    def uploads(self, prefix: str = "") -> Iterator[OpenUpload]:
        """The open multipart uploads under `prefix` (keys relative to the storage root)."""

        def pages() -> list[OpenUpload]:
            paginator = self.client.get_paginator("list_multipart_uploads")
            return [
                OpenUpload(up["Key"][len(self.prefix) :], up["UploadId"], up["Initiated"])
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
                for up in page.get("Uploads", [])
            ]

        return iter(self._call("list uploads", pages))

    def abort_upload(self, upload: OpenUpload) -> None:
        """Abort one upload (already gone: nothing to do)."""
        try:
            self._call(
                "abort",
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.prefix + upload.key, UploadId=upload.upload_id
                ),
            )
        except ClientError as exc:
            if not _missing(exc):
                raise

    def abort_uploads(self, prefix: str = "", older_than: float = 0.0) -> int:
        """Abort the uploads under `prefix` started more than `older_than` seconds ago:
        their parts cost money and never become an object."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        stale = [up for up in self.uploads(prefix) if up.initiated <= cutoff]
        for up in stale:
            self.abort_upload(up)
        return len(stale)

    def compose(self, key: str, pieces: Sequence[Piece]) -> Composed:
        """Write `key` as the concatenation of `pieces` (inline bytes, stored keys, spans)."""
        sizes = [_length(p) if isinstance(p, (bytes, Span)) else self.size(p) for p in pieces]
        total = sum(sizes)
        if total < self.min_part:  # too small for a multipart upload: one PUT
            return self._compose_small(key, pieces)
        part_size = max(self.min_part, math.ceil(total / TARGET_PARTS))
        with Assembly(self, self._k(key), part_size) as asm:
            for piece, size in zip(pieces, sizes, strict=True):
                if isinstance(piece, bytes):
                    asm.add_bytes(piece)
                elif isinstance(piece, Span):
                    asm.add_object(self._k(piece.key), size, piece)
                else:
                    asm.add_object(self._k(piece), size)
            return asm.complete()

    def _compose_small(self, key: str, pieces: Sequence[Piece]) -> Composed:
        buf = bytearray()
        for piece in pieces:
            if isinstance(piece, bytes):
                buf += piece
            elif isinstance(piece, Span):
                data = self.read_range(piece.key, piece.start, piece.end)
                if len(data) != piece.end - piece.start:
                    raise OSError(f"{piece.key!r} is shorter than the span composed from it")
                buf += data
            else:
                with self.open_read(piece) as fh:
                    buf += fh.read()
        data = bytes(buf)
        target = self._k(key)
        self._call("put", lambda: self.client.put_object(Bucket=self.bucket, Key=target, Body=data))
        return Composed(len(data), hashlib.sha256(data).hexdigest())


class _KeepOpen:
    """The spool as the transfer manager reads it, except that its `close` (which the
    transfer calls on a failure) leaves the spool open for the next try."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def read(self, size: int = -1) -> bytes:
        return cast(bytes, self._fh.read(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._fh.seek(offset, whence))

    def tell(self) -> int:
        return int(self._fh.tell())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        return None


class _ObjectReader(io.RawIOBase):
    """Bytes [start, end) of an object (`end` None: to its end) as a raw stream. A read
    that loses its connection is taken up again where it stopped, from the same version
    of the object (`IfMatch` its ETag), for as long as the outage budget allows."""

    def __init__(self, storage: S3Storage, key: str, start: int, end: int | None) -> None:
        self._s3 = storage
        self.key = key
        self.pos = start
        self.etag = ""
        self._body: Any = None
        ranged = {"Range": f"bytes={start}-{end - 1}"} if end is not None else {}
        obj = storage._call(
            "get", lambda: storage.client.get_object(Bucket=storage.bucket, Key=key, **ranged)
        )
        self._body, self.etag = obj["Body"], obj["ETag"]
        self.end = start + int(obj["ContentLength"])

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.pos >= self.end:
            return 0
        want = min(len(b), self.end - self.pos)
        data = self._s3._call("read", lambda: self._read(want))
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def _read(self, want: int) -> bytes:
        if self._body is None:
            s3 = self._s3
            self._body = s3.client.get_object(
                Bucket=s3.bucket, Key=self.key, Range=f"bytes={self.pos}-{self.end - 1}",
                IfMatch=self.etag,
            )["Body"]  # fmt: skip
        try:
            data = cast(bytes, self._body.read(want))
            if not data:  # the connection ended before the object did
                raise IncompleteReadError(actual_bytes=self.pos, expected_bytes=self.end)
            return data
        except Exception:
            self._drop()
            raise

    def _drop(self) -> None:
        body, self._body = self._body, None
        try:
            body.close()
        except Exception as exc:  # a broken connection may not even close cleanly
            log.debug("closing a broken S3 stream: %s", type(exc).__name__)

    def close(self) -> None:
        if self._body is not None:
            self._drop()
        super().close()


def _length(piece: bytes | Span) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.end - piece.start


class Assembly:
    """One multipart upload, built in the order of the pieces.

    Plan: small data is gathered in a buffer that is uploaded as a part once it reaches
    `part_size`; the rest of a stored piece that is at least `part_size` long is copied
    server-side (UploadPartCopy with a byte range), in copies of at most 5 GiB. So every
    part but the last is >= part_size >= 5 MiB, and there are at most about
    total / part_size + 1 <= 9,001 parts.

    sha256: every stored piece is read once, in order, through the hash (the bytes that
    are copied server-side are read and dropped); the copy is conditioned on the ETag of
    the object that was read (`CopySourceIfMatch`), so the hash is of the very bytes that
    end up in the file. S3's own multipart checksums are checksums of part checksums, not
    the sha256 of the file, so they cannot stand in for it.

    Abandoned: leaving the block with an error aborts the upload; an upload left by a
    process that died is aborted by the task's cleanup and by the sweeper."""

    def __init__(self, storage: S3Storage, target: str, part_size: int) -> None:
        self.storage = storage
        self.s3 = storage.client
        self.bucket = storage.bucket
        self.target = target
        self.part_size = part_size
        self.buffer = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.sha = hashlib.sha256()
        self.total = 0
        self.upload_id = ""

    def __enter__(self) -> Assembly:
        up = self.storage._call(
            "create upload",
            lambda: self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.target),
        )
        self.upload_id = up["UploadId"]
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        """Abort on error (a failing abort leaves the upload to the task's cleanup and
        the sweeper, and the first error is the one that propagates)."""
        if exc_type is None or not self.upload_id:
            return
        try:
            self.storage._call(
                "abort",
                lambda: self.s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.target, UploadId=self.upload_id
                ),
            )
        except Exception as exc:
            log.warning("upload of %s not aborted yet: %s", self.target, type(exc).__name__)

    def add_bytes(self, data: bytes) -> None:
        self.sha.update(data)
        self.total += len(data)
        self._buffer(data)

    def add_object(self, source: str, size: int, span: Span | None = None) -> None:
        """Stream the object (or the span of it) through the hash; buffer the bytes that
        must be merged and copy the rest server-side when it is a part of its own."""
        if span is not None and size == 0:
            return
        head = min(size, self.part_size - len(self.buffer)) if self.buffer else 0
        copy_rest = size - head >= self.part_size
        keep = head if copy_rest else size
        start = span.start if span is not None else 0
        reader = _ObjectReader(self.storage, source, start, start + size if span else None)
        pos = 0
        try:
            for chunk in iter(lambda: reader.read(CHUNK), b""):
                self.sha.update(chunk)
                if pos < keep:
                    self._buffer(chunk[: keep - pos])
                pos += len(chunk)
        finally:
            reader.close()
        if pos != size:
            raise OSError(f"part {source!r} changed while being assembled")
        self.total += size
        if copy_rest:
            self._copy(source, reader.etag, start + head, start + size)

    def _buffer(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.part_size:
            self._flush()

    def _flush(self) -> None:
        number = len(self.parts) + 1
        body = bytes(self.buffer)
        reply = self.storage._call(
            "upload part",
            lambda: self.s3.upload_part(
                Bucket=self.bucket,
                Key=self.target,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
            ),
        )
        self.parts.append({"PartNumber": number, "ETag": reply["ETag"]})
        self.buffer.clear()

    def _copy(self, source: str, etag: str, start: int, end: int) -> None:
        """Copy bytes [start, end) of `source` as parts of at most 5 GiB, equal in size."""
        count = math.ceil((end - start) / MAX_PART)
        step = math.ceil((end - start) / count)
        for lo in range(start, end, step):
            hi = min(lo + step, end)
            number = len(self.parts) + 1
            reply = self.storage._call("copy part", partial(self._copy_part, source, etag, lo, hi))
            self.parts.append({"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]})

    def _copy_part(self, source: str, etag: str, lo: int, hi: int) -> Any:
        return self.s3.upload_part_copy(
            Bucket=self.bucket,
            Key=self.target,
            UploadId=self.upload_id,
            PartNumber=len(self.parts) + 1,
            CopySource={"Bucket": self.bucket, "Key": source},
            CopySourceRange=f"bytes={lo}-{hi - 1}",
            CopySourceIfMatch=etag,
        )

    def complete(self) -> Composed:
        if self.buffer:
            self._flush()
        if len(self.parts) > MAX_PARTS:
            raise OSError(f"{len(self.parts)} parts: more than S3 allows")
        try:
            self.storage._call(
                "complete upload",
                lambda: self.s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.target,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                ),
            )
        except ClientError as exc:  # a retry after a completion whose answer was lost
            if not (_missing(exc) and self._completed()):
                raise
        self.upload_id = ""
        return Composed(self.total, self.sha.hexdigest())

    def _completed(self) -> bool:
        """Whether the target exists with the assembled size (the upload did complete)."""
        try:
            head = self.storage._call(
                "head", lambda: self.s3.head_object(Bucket=self.bucket, Key=self.target)
            )
        except ClientError:
            return False
        return int(head["ContentLength"]) == self.total


def _hash_file(fh: Any) -> Any:
    digest = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest
