"""S3 storage against a real S3-speaking server (moto's server mode on loopback), which
enforces S3's multipart rules (every part but the last >= 5 MiB, ETags must match)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from exportd.storage import Span, check_key, open_storage
from exportd.storage.s3 import MIN_PART, Assembly, S3Storage
from tests.support import s3_client

MiB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    """Incompressible, distinct bytes so a misplaced range would show."""
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + os.urandom(size % 32)


def store(storage: S3Storage, key: str, data: bytes) -> str:
    with storage.open_write(key) as out:
        out.write(data)
    return key


def bucket_client(storage: S3Storage) -> Any:
    return storage.client


def test_objects_round_trip(s3_storage_url: str) -> None:
    storage = open_storage(s3_storage_url)
    assert isinstance(storage, S3Storage)
    store(storage, "parts/t1/00000.csv", b"a,b\n")
    store(storage, "parts/t1/00001.csv", b"c,d\n")
    store(storage, "exports/p/t1/out.csv", b"x")
    assert storage.exists("parts/t1/00000.csv") and not storage.exists("parts/t1/nope")
    assert storage.size("parts/t1/00001.csv") == 4
    with storage.open_read("parts/t1/00001.csv") as fh:
        assert fh.read() == b"c,d\n"
    assert list(storage.list("parts/t1/")) == ["parts/t1/00000.csv", "parts/t1/00001.csv"]
    with pytest.raises(FileNotFoundError):
        storage.open_read("parts/t1/nope")
    # every key lives under the URL's prefix in the bucket
    raw = storage.client.list_objects_v2(Bucket=storage.bucket)["Contents"]
    assert sorted(o["Key"] for o in raw) == [
        "root/exports/p/t1/out.csv", "root/parts/t1/00000.csv", "root/parts/t1/00001.csv",
    ]  # fmt: skip
    assert storage.delete_prefix("parts/t1/") == 2
    assert list(storage.list("parts/")) == []
    assert storage.exists("exports/p/t1/out.csv")


def test_multipart_compose_merges_small_parts_and_copies_large_ones(s3_storage_url: str) -> None:
    storage = open_storage(s3_storage_url)
    assert isinstance(storage, S3Storage)
    header = b"id,name\n"
    sizes = [6 * MiB, 1024, 12 * MiB, 3 * MiB, 2 * MiB - len(header) - 1024 + 7]
    datas = [blob(n, i) for i, n in enumerate(sizes)]
    keys = [store(storage, f"parts/t/{i:05d}.csv", d) for i, d in enumerate(datas)]

    composed = storage.compose("exports/p/t/out.csv", [header, *keys])

    want = header + b"".join(datas)
    with storage.open_read("exports/p/t/out.csv") as fh:
        got = fh.read()
    assert got == want
    assert composed.bytes == len(want)
    assert composed.sha256 == hashlib.sha256(want).hexdigest()
    # header + 5 MiB of the first part; the first part's tail, the 1 KiB part and the head
    # of the 12 MiB part; the rest of that one (server-side copy); 3 MiB + 2 MiB + 7 bytes
    head = storage.client.head_object(Bucket=storage.bucket, Key="root/exports/p/t/out.csv")
    assert head["ETag"].strip('"').endswith("-4")
    sizes_of_parts = [
        storage.client.head_object(
            Bucket=storage.bucket, Key="root/exports/p/t/out.csv", PartNumber=n
        )["ContentLength"]
        for n in range(1, 5)
    ]
    assert all(s >= MIN_PART for s in sizes_of_parts[:-1])
    assert sum(sizes_of_parts) == len(want)
    assert list(storage.open_uploads()) == []


def test_compose_takes_spans_of_objects(s3_storage_url: str) -> None:
    """Spans (byte ranges of stored objects, as Parquet copy-through assembles): merged
    into parts where small, copied server-side where large; hashed as written."""
    storage = open_storage(s3_storage_url)
    assert isinstance(storage, S3Storage)
    big, small = blob(14 * MiB, 1), blob(300, 2)
    store(storage, "parts/r/big", big)
    store(storage, "parts/r/small", small)
    assert storage.read_range("parts/r/big", 7, 20) == big[7:20]
    assert storage.read_range("parts/r/small", 290, 400) == small[290:]
    pieces = [
        b"PAR1", Span("parts/r/small", 4, 290), Span("parts/r/big", 4, 13 * MiB + 5),
        Span("parts/r/small", 10, 10), Span("parts/r/big", 100, 6 * MiB), b"tail",
    ]  # fmt: skip
    want = b"PAR1" + small[4:290] + big[4 : 13 * MiB + 5] + big[100 : 6 * MiB] + b"tail"
    composed = storage.compose("exports/p/r/out.parquet", pieces)
    with storage.open_read("exports/p/r/out.parquet") as fh:
        assert fh.read() == want
    assert composed.bytes == len(want)
    assert composed.sha256 == hashlib.sha256(want).hexdigest()
    head = storage.client.head_object(Bucket=storage.bucket, Key="root/exports/p/r/out.parquet")
    # 5 MiB merged; the rest of the first big span and the second one copied; the tail
    assert head["ETag"].strip('"').endswith("-4")
    # below S3's smallest part: one PUT
    small_out = storage.compose("exports/p/r/small.parquet", pieces[:2] + pieces[-1:])
    with storage.open_read("exports/p/r/small.parquet") as fh:
        assert fh.read() == b"PAR1" + small[4:290] + b"tail"
    assert small_out.bytes == 4 + 286 + 4


def test_small_output_is_one_put(s3_storage_url: str) -> None:
    storage = open_storage(s3_storage_url)
    keys = [store(storage, f"parts/s/{i}.jsonl", b'{"i": %d}\n' % i) for i in range(3)]  # type: ignore[arg-type]
    composed = storage.compose("exports/p/s/out.jsonl", keys)
    with storage.open_read("exports/p/s/out.jsonl") as fh:
        data = fh.read()
    assert data == b'{"i": 0}\n{"i": 1}\n{"i": 2}\n'
    assert composed.sha256 == hashlib.sha256(data).hexdigest()


def test_failed_assembly_aborts_its_upload(s3_storage_url: str) -> None:
    storage = open_storage(s3_storage_url)
    assert isinstance(storage, S3Storage)
    with (
        pytest.raises(RuntimeError),
        Assembly(storage, "root/exports/p/x/out.csv", MIN_PART) as asm,
    ):
        asm.add_bytes(blob(6 * MiB, 1))  # one part uploaded
        assert len(list(storage.open_uploads())) == 1
        raise RuntimeError("coordinator lost its lease")
    assert list(storage.open_uploads()) == []
    assert not storage.exists("exports/p/x/out.csv")


def test_janitor_aborts_uploads_under_its_prefix_only(
    s3_storage_url: str, s3_endpoint: str
) -> None:
    storage = open_storage(s3_storage_url)
    assert isinstance(storage, S3Storage)
    client = s3_client(s3_endpoint)
    client.create_multipart_upload(Bucket=storage.bucket, Key="root/exports/p/a/out.csv")
    client.create_multipart_upload(Bucket=storage.bucket, Key="elsewhere/out.csv")
    # (moto reports a fixed 2010 `Initiated` for every upload, so age is not checked here)
    assert storage.abort_uploads("exports/", older_than=3600) == 1
    left = client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["elsewhere/out.csv"]  # outside exportd's prefix


@pytest.mark.parametrize("key", ["", "/abs/x", "a/../b", "a//b", "..", "a/./b", "a\\b", "a\nb"])
def test_keys_cannot_escape(key: str, s3_storage_url: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    with pytest.raises(ValueError):
        open_storage(s3_storage_url).exists(key)
