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
