"""The storage's copy operations that a samples export uses: a local file put into a local
directory (kernel copy, hashed on the way) or an S3 bucket (an upload), and an object
copied inside the storage (a kernel copy; S3's server-side CopyObject); and a samples
export whose storage is S3 (moto's server on loopback)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from exportd.storage import SourceUnreadable, is_temporary, open_storage
from exportd.storage.local import LocalStorage
from exportd.storage.s3 import S3Storage
from tests.integration.test_samples import write_digits


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024 + 7])
def test_local_put_file_and_copy(tmp_path: Path, size: int) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    storage = LocalStorage(tmp_path / "store")
    put = storage.put_file("a/b/c.bin", src)
    assert (put.bytes, put.sha256) == (size, sha(data))
    assert (tmp_path / "store/a/b/c.bin").read_bytes() == data
    fd = os.open(src, os.O_RDONLY)
    try:  # an open descriptor is read from its start and left open
        assert storage.put_file("a/d.bin", fd).sha256 == sha(data)
        os.fstat(fd)
    finally:
        os.close(fd)
    copied = storage.copy("a/b/c.bin", "e/f.bin")
    assert (copied.bytes, copied.sha256) == (size, sha(data))
    assert (tmp_path / "store/e/f.bin").read_bytes() == data
    assert not any(is_temporary(k) for k in storage.list(""))
    with pytest.raises(SourceUnreadable):
        storage.put_file("x.bin", tmp_path / "missing.bin")
    with pytest.raises(ValueError):
        storage.put_file("../escape.bin", src)
    # a file already there (an earlier attempt's, longer) is replaced whole, and a
    # symlink at the key is replaced, never written through
    store = tmp_path / "store"
    (store / "a/b/c.bin").write_bytes(b"x" * (size + 100))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep")
    (store / "a/link.bin").symlink_to(outside)
    assert storage.put_file("a/b/c.bin", src).sha256 == sha(data)
    assert storage.put_file("a/link.bin", src).sha256 == sha(data)
    assert (store / "a/b/c.bin").read_bytes() == data
    assert not (store / "a/link.bin").is_symlink()
    assert (store / "a/link.bin").read_bytes() == data and outside.read_bytes() == b"keep"
    assert not any(is_temporary(k) for k in storage.list(""))
    # a failed copy leaves nothing at its key
    with pytest.raises(SourceUnreadable):
        storage.put_file("a/dir.bin", tmp_path)  # a folder: not a file to read
    assert not storage.exists("a/dir.bin")


@pytest.mark.parametrize("size", [1000, 9 * 1024 * 1024])
def test_s3_put_file_and_server_side_copy(s3_storage_url: str, tmp_path: Path, size: int) -> None:
    storage = open_storage(s3_storage_url)
    assert isinstance(storage, S3Storage)
    src = tmp_path / "src.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    put = storage.put_file("samples/a.bin", src)
    assert (put.bytes, put.sha256) == (size, sha(data))
    copied = storage.copy("samples/a.bin", "samples/b/a.bin")
    assert (copied.bytes, copied.sha256) == (size, sha(data))
    with storage.open_read("samples/b/a.bin") as fh:
        assert fh.read() == data
    with pytest.raises(SourceUnreadable):
        storage.put_file("samples/x.bin", tmp_path / "missing.bin")


def test_samples_export_to_s3(s3_storage_url: str, tmp_path: Path, live_server: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    records = write_digits(src)[:40]
    (src / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    server = live_server(workers=2, source_dirs=[str(src)], storage_url=s3_storage_url)
    api = server.client()
    api.project("acme")
    api.dataset("acme", name="few", kind="samples", path=str(src / "few.jsonl"))
    task = api.export("acme", dataset_id="few", sample_export={"export_format": 2})
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED", done
    manifest = api.http.get(f"/v1/projects/acme/exports/{done['task_id']}/manifest").json()
    storage = open_storage(s3_storage_url)
    prefix = manifest["path"]
    images = [f for f in manifest["files"] if not f.get("label_file")]
    assert len(images) == len(records)
    for f in manifest["files"]:
        with storage.open_read(prefix + f["name"]) as fh:
            assert sha(fh.read()) == f["sha256"]
    by_name = {r["source"].rsplit("/", 1)[1]: r for r in records}
    for f in images:
        with storage.open_read(prefix + f["name"]) as fh:
            assert fh.read() == (src / by_name[f["name"]]["source"]).read_bytes()


@pytest.mark.parametrize("dest", ["local", "s3"])
def test_samples_from_an_s3_prefix(
    dest: str, s3_endpoint: str, s3_storage_url: str, tmp_path: Path, live_server: Any
) -> None:
    """A tree of class folders and a manifest in S3, under the administrator's S3 source
    prefix: listed, counted and exported (to S3: server-side copies)."""
    from tests.support import s3_client

    src = tmp_path / "src"
    src.mkdir()
    records = write_digits(src)[:30]
    client = s3_client(s3_endpoint)
    bucket = "samples-src-" + tmp_path.name[-8:].lower().replace("_", "-")
    client.create_bucket(Bucket=bucket)
    for r in records:
        client.put_object(
            Bucket=bucket, Key=f"lab/{r['source']}", Body=(src / r["source"]).read_bytes()
        )
    manifest = "".join(json.dumps(r) + "\n" for r in records).encode()
    client.put_object(Bucket=bucket, Key="lab/few.jsonl", Body=manifest)
    allowed = f"s3://{bucket}/lab?endpoint_url={s3_endpoint}&region=us-east-1"
    storage = {"storage_url": s3_storage_url} if dest == "s3" else {}
    server = live_server(workers=2, source_s3_prefixes=[allowed], **storage)
    api = server.client()
    api.project("acme")
    api.dataset("acme", name="tree", kind="samples", path=f"s3://{bucket}/lab/digits/")
    api.dataset("acme", name="few", kind="samples", path=f"s3://{bucket}/lab/few.jsonl")
    r = api.http.post(
        "/v1/projects/acme/datasets",
        json={"name": "x", "kind": "samples", "path": f"s3://{bucket}/other/"},
    )
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PATH", r.text
    counted = api.http.get("/v1/projects/acme/datasets/tree/samples-count").json()
    assert counted["total"] == len(records)

    for name in ("tree", "few"):
        task = api.export("acme", dataset_id=name, sample_export={"export_format": 1})
        done = api.wait("acme", task["task_id"], timeout=120)
        assert done["status"] == "COMPLETED", done
        body = api.http.get(f"/v1/projects/acme/exports/{done['task_id']}/manifest").json()
        out = open_storage(server.settings.files_url)
        by_name = {r["source"].rsplit("/", 1)[1]: r for r in records}
        assert len(body["files"]) == len(records)
        for f in body["files"]:
            with out.open_read(body["path"] + f["name"]) as fh:
                data = fh.read()
            assert sha(data) == f["sha256"]
            assert data == (src / by_name[f["name"].rsplit("/", 1)[-1]]["source"]).read_bytes()
