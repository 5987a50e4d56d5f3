"""A document that cannot be exported is one failed item, not a failed partition: JSON
Lines files with two broken lines, exported with `allow_partial`, end
COMPLETED_WITH_ERRORS with exactly those two lines failed (file and byte offset, the
reason), every other document in the output once, through the Arrow header pass (CSV),
the Python path (fast paths off) and a format without a header pass (JSON Lines).
Without `allow_partial` the task fails as before."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.documents_support import make_docs, oracle_header, oracle_rows, read_csv, write_jsonl
from tests.integration.test_documents import download

BROKEN = [b'{"id": 100001, "user": {"name": "x"\n', b"not json at all\n"]


def _files(src: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """600 documents in two files, a broken line inside each; the failed items' keys."""
    (src / "logs").mkdir(parents=True)
    docs = make_docs(600)
    keys = []
    for n, (part, broken) in enumerate(zip((docs[:300], docs[300:]), BROKEN, strict=True)):
        path = src / "logs" / f"part-{n}.jsonl"
        write_jsonl(path, part[:150])
        at = path.stat().st_size
        with path.open("ab") as out:
            out.write(broken)
        keys.append(f"{path.name} at byte {at}")
        more = src / "logs" / "more.tmp"
        write_jsonl(more, part[150:])
        with path.open("ab") as out:
            out.write(more.read_bytes())
        more.unlink()
    return docs, keys


@pytest.mark.parametrize(
    ("fmt", "fast"),
    [("csv", True), ("csv", False), ("jsonl", True)],
    ids=["arrow", "python", "jsonl"],
)
def test_a_broken_document_is_one_failed_item(
    tmp_path: Path, live_server: Any, fmt: str, fast: bool
) -> None:
    src = tmp_path / "src"
    docs, keys = _files(src)
    server = live_server(workers=2, source_dirs=[str(src)], fast_paths=fast)
    admin = server.client()
    token = admin.project("p")
    admin.dataset("p", name="logs", kind="documents", path=f"{src}/logs/*.jsonl")
    api = server.client(token)

    task = api.export("p", dataset_id="logs", format=fmt, parallelism=4, allow_partial=True)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED_WITH_ERRORS", done["error_msg"]
    failed = sorted(done["failed_items"], key=lambda i: i["key"])
    assert [i["key"] for i in failed] == sorted(keys)
    assert {i["error_code"] for i in failed} == {"INVALID_DOCUMENT"}
    assert all("invalid JSON" in i["error_msg"] for i in failed)
    assert done["finished_count"] == 600 and done["failed_count"] == 2
    assert done["success_rate"] == 99.66  # 600 of 602, rounded down

    body = download(api, "p", task["task_id"])
    if fmt == "csv":
        header, rows = read_csv(body)
        assert header == oracle_header(docs)
        assert Counter(tuple(r) for r in rows) == oracle_rows(docs, header)
    else:
        got = [json.loads(line) for line in body.decode().splitlines()]
        assert sorted(got, key=lambda d: d["id"]) == docs


def test_without_allow_partial_a_broken_document_fails_the_task(
    tmp_path: Path, live_server: Any
) -> None:
    src = tmp_path / "src"
    _files(src)
    server = live_server(workers=2, source_dirs=[str(src)])
    admin = server.client()
    token = admin.project("p")
    admin.dataset("p", name="logs", kind="documents", path=f"{src}/logs/*.jsonl")
    api = server.client(token)
    task = api.export("p", dataset_id="logs", format="csv", parallelism=2)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "FAILED", done
    # each partition failed whole (after its attempts), on its broken line
    assert {i["error_code"] for i in done["failed_items"]} == {"INVALID_DOCUMENT"}
    items = done["failed_items"]
    assert all("partition" in i and not i.get("key") for i in items), items
