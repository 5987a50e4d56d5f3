"""S3-compatible object storage through boto3.

Objects are written whole (a PUT is atomic on S3, so nobody sees half an object). The
single output file is assembled by `compose` as one multipart upload whose parts are
server-side copies of the committed part objects (UploadPartCopy), merged where they are
too small: S3 wants every part but the last to be at least 5 MiB and at most 10,000 parts.
See `Assembly` for the plan and for how the sha256 of the result is computed."""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, quote, unquote, urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from exportd.storage import Composed, Piece, Span, check_key

MIN_PART = 5 * 1024 * 1024  # S3: every part but the last
MAX_PART = 5 * 1024**3  # S3: the largest part (and the largest single copy)
MAX_PARTS = 10_000  # S3: parts per upload
TARGET_PARTS = 9_000  # leave room: parts grow with the file so they never pass MAX_PARTS
CHUNK = 1 << 20
SPOOL = 8 * 1024 * 1024  # a write is kept in memory up to this size, then on local disk


def _missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


class _Body(io.RawIOBase):
    """A botocore streaming body as a readable raw stream (so it can be buffered)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._body.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3Storage:
    """A bucket, and a prefix inside it under which every key of exportd lives."""

    def __init__(self, bucket: str, prefix: str, client: Any, *, min_part: int = MIN_PART) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.min_part = min_part
        self._transfer = TransferConfig(max_concurrency=4, multipart_threshold=SPOOL)

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        """`s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=eu-west-1`;
        credentials come from the usual AWS environment variables (or instance roles)."""
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
                retries={"max_attempts": 5, "mode": "standard"},
                signature_version="s3v4",
            ),
        )
        return cls(parsed.netloc, unquote(parsed.path), client)

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    # ---- objects -----------------------------------------------------------------------

    @contextmanager
    def open_write(self, key: str, durable: bool = True) -> Iterator[BinaryIO]:
        """Spool the object (memory, then local disk) and PUT it once the block exits."""
        target = self._k(key)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL) as buf:
            yield cast(BinaryIO, buf)
            buf.seek(0)
            self.client.upload_fileobj(buf, self.bucket, target, Config=self._transfer)

    def open_read(self, key: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise
        return cast(BinaryIO, io.BufferedReader(_Body(body), CHUNK))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        try:
            obj = self.client.get_object(
                Bucket=self.bucket, Key=self._k(key), Range=f"bytes={start}-{end - 1}"
            )
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise
        body = obj["Body"]
        try:
            return cast(bytes, body.read())
        finally:
            body.close()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return head

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete the objects under `prefix` and abort any upload still open there."""
        self.abort_uploads(prefix)
        keys = [self._k(k) for k in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def list(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._k(prefix)
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix) :]

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
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        for page in pages:
            for up in page.get("Uploads", []):
                yield up["Key"], up["UploadId"], up["Initiated"]

    def abort_uploads(self, prefix: str = "", older_than: float = 0.0) -> int:
        """Abort the uploads under `prefix` started more than `older_than` seconds ago:
        their parts cost money and never become an object."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        stale = [(k, u) for k, u, t in self.open_uploads(prefix) if t <= cutoff]
        for key, upload_id in stale:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if not _missing(exc):
                    raise
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
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        return Composed(len(data), hashlib.sha256(data).hexdigest())


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
    process that died is aborted by the janitor (`S3Storage.abort_uploads`)."""

    def __init__(self, storage: S3Storage, target: str, part_size: int) -> None:
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
        up = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.target)
        self.upload_id = up["UploadId"]
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None and self.upload_id:
            self.s3.abort_multipart_upload(
                Bucket=self.bucket, Key=self.target, UploadId=self.upload_id
            )

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
        ranged = {"Range": f"bytes={start}-{start + size - 1}"} if span is not None else {}
        obj = self.s3.get_object(Bucket=self.bucket, Key=source, **ranged)
        pos = 0
        body = obj["Body"]
        try:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                self.sha.update(chunk)
                if pos < keep:
                    self._buffer(chunk[: keep - pos])
                pos += len(chunk)
        finally:
            body.close()
        if pos != size:
            raise OSError(f"part {source!r} changed while being assembled")
        self.total += size
        if copy_rest:
            self._copy(source, obj["ETag"], start + head, start + size)

    def _buffer(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= self.part_size:
            self._flush()

    def _flush(self) -> None:
        number = len(self.parts) + 1
        reply = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.target,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self.buffer),
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
            reply = self.s3.upload_part_copy(
                Bucket=self.bucket,
                Key=self.target,
                UploadId=self.upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source},
                CopySourceRange=f"bytes={lo}-{hi - 1}",
                CopySourceIfMatch=etag,
            )
            self.parts.append({"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]})

    def complete(self) -> Composed:
        if self.buffer:
            self._flush()
        if len(self.parts) > MAX_PARTS:
            raise OSError(f"{len(self.parts)} parts: more than S3 allows")
        self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.target,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )
        self.upload_id = ""
        return Composed(self.total, self.sha.hexdigest())
