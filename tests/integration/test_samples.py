"""Samples datasets and seed 003's export of labelled files, over real HTTP: scikit-learn's
bundled handwritten digits written as PNG files (a tree of class folders, and a JSON
Lines manifest with labels, states, hard-example flags and metadata), exported as a tree
or a tile layout, split into train/ and eval/, searched, into a new dataset; a worker
SIGKILLed mid-copy."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tests.support import Api, LiveServer

N = 300  # digits used: enough for 10 classes of ~30 and a few partitions
STATES = ("__ACCEPTED__", "__UNCHECK__", "__REJECTED__")


def write_digits(directory: Path) -> list[dict[str, Any]]:
    """The first N digits as 8x8 grey PNGs in class folders `digits/<d>/<i>.png`, and
    their manifest records (every 11th unlabelled; states, hard flags, metadata)."""
    digits = load_digits()
    records = []
    for i in range(N):
        label = str(int(digits.target[i]))
        pixels = (digits.images[i] * 255 / 16).astype("uint8")
        folder = directory / "digits" / label
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        (folder / f"{i:04d}.png").write_bytes(buf.getvalue())
        hard = i % 7 == 0
        rec: dict[str, Any] = {
            "id": f"d{i:04d}",
            "source": f"digits/{label}/{i:04d}.png",
            "labels": []
            if i % 11 == 0
            else [
                {
                    "name": label,
                    "type": 0,
                    "property": {"@modelarts:hard": hard, "pen": "blue" if i % 2 else "red"},
                }
            ],
            "state": STATES[i % 3],
            "hard": hard,
            "hard_coefficient": 0.5 if hard else None,
            "labeler": "alice" if i % 4 else "bob",
            "metadata": {"parity": "even" if i % 2 == 0 else "odd", "row": i},
            "score": round((i % 10) / 10, 1),
            "sample_time": "2026-11-20T10:00:00Z",
        }
        records.append({k: v for k, v in rec.items() if v is not None})
    return records


def write_manifest(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def src(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    d = tmp_path / "src"
    d.mkdir()
    records = write_digits(d)
    write_manifest(d / "samples.jsonl", records)
    return d, records


def setup(server: LiveServer, src: Path) -> Api:
    api = server.client()
    api.project("acme")
    api.dataset("acme", name="tree", kind="samples", path=str(src / "digits"))
    api.dataset("acme", name="labelled", kind="samples", path=str(src / "samples.jsonl"))
    return api


def run(api: Api, dataset: str, timeout: float = 120, **params: Any) -> dict[str, Any]:
    top = {k: params.pop(k) for k in ("parallelism", "allow_partial") if k in params}
    body: dict[str, Any] = {"dataset_id": dataset, "sample_export": params, **top}
    task = api.export("acme", **body)
    return api.wait("acme", task["task_id"], timeout=timeout)


def out_dir(server: LiveServer, task: dict[str, Any]) -> Path:
    """The task's folder in the local storage."""
    root = server.settings.data_dir / "files"
    # not under parts/, which the task's cleanup may be deleting meanwhile
    [found] = [
        p
        for top in root.iterdir()
        if top.name != "parts"
        for p in top.rglob(task["task_id"])
        if p.is_dir()
    ]
    return found


def manifest(api: Api, task: dict[str, Any]) -> dict[str, Any]:
    r = api.http.get(f"/v1/projects/acme/exports/{task['task_id']}/manifest")
    assert r.status_code == 200, r.text
    return dict(r.json())


def version_lines(folder: Path, task: dict[str, Any]) -> list[dict[str, Any]]:
    text = (folder / task["file_name"]).read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def class_folders(root: Path) -> dict[str, list[Path]]:
    """What a class-folder reader (torchvision's ImageFolder) finds: each folder a
    class, every file under it a sample of that class."""
    return {
        d.name: sorted(p for p in d.rglob("*") if p.is_file())
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_tree_export_reads_as_class_folders(src: Any, live_server: Any) -> None:
    directory, _ = src
    server = live_server(workers=2, source_dirs=[str(directory)])
    api = setup(server, directory)
    expected = Counter(str(int(t)) for t in load_digits().target[:N])

    counted = api.http.get("/v1/projects/acme/datasets/tree/samples-count").json()
    assert counted["total"] == N and counted["labelled"] == N
    assert counted["labels"] == dict(expected)
    page = api.http.get(
        "/v1/projects/acme/datasets/tree/samples", params={"label": "3", "limit": 5}
    ).json()
    assert page["count"] == expected["3"] and len(page["samples"]) == 5
    assert all(s["labels"][0]["name"] == "3" for s in page["samples"])

    done = run(api, "tree", export_type=2, export_format=1, parallelism=3)
    assert done["status"] == "COMPLETED", done
    assert done["total_count"] == N and done["finished_count"] == N
    folder = out_dir(server, done)
    classes = class_folders(folder)
    assert {c: len(files) for c, files in classes.items()} == dict(expected)
    for label, files in classes.items():
        for f in files:
            assert f.read_bytes() == (directory / "digits" / label / f.name).read_bytes()
    body = manifest(api, done)
    assert len(body["files"]) == N and body["exported_samples"] == N
    for f in body["files"]:
        assert hashlib.sha256((folder / f["name"]).read_bytes()).hexdigest() == f["sha256"]

    seed = api.http.get(f"/v2/acme/datasets/tree/export-tasks/{done['task_id']}").json()
    assert seed["export_format"] == 1 and seed["export_type"] == 2
    assert seed["total_sample_count"] == N and seed["finished_sample_count"] == N
    assert seed["version_format"] == "Default" and seed["progress"] == 100.0
    params = seed["export_params"]
    assert params["export_dest"] == "DIR" and params["clear_hard_property"] is True
    assert params["ratio_sample_usage"] is False and params["train_sample_ratio"] == "1.00"


def test_tile_split_search_and_partial(src: Any, live_server: Any) -> None:
    directory, records = src
    server = live_server(workers=2, source_dirs=[str(directory)])
    api = setup(server, directory)
    labelled = [r for r in records if r["labels"]]

    first = run(api, "labelled", export_type=0, export_format=2, ratio_sample_usage=True,
                train_sample_ratio="0.80", split_seed=7, version_format="CSV")  # fmt: skip
    assert first["status"] == "COMPLETED", first
    folder = out_dir(server, first)
    split = {sub: files_under(folder / sub) for sub in ("train", "eval")}
    images = {sub: {f for f in files if f.endswith(".png")} for sub, files in split.items()}
    # every image beside its label file of the same stem, which names its label
    by_id = {r["source"].rsplit("/", 1)[1]: r for r in labelled}
    for sub, files in split.items():
        assert {f[:-4] for f in files if f.endswith(".txt")} == {f[:-4] for f in images[sub]}
        for f in images[sub]:
            labels = [
                json.loads(x) for x in (folder / sub / f"{f[:-4]}.txt").read_text().splitlines()
            ]
            assert [lb["name"] for lb in labels] == [lb["name"] for lb in by_id[f]["labels"]]
            assert "@modelarts:hard" not in labels[0]["property"]  # cleared by default
            assert labels[0]["property"]["pen"] == by_id[f]["labels"][0]["property"]["pen"]
    assert not images["train"] & images["eval"]
    assert images["train"] | images["eval"] == set(by_id)
    assert abs(len(images["train"]) - 0.8 * len(labelled)) <= 1
    assert first["samples"]["split"]["train"] == len(images["train"])
    body = manifest(api, first)
    assert body["split"]["train"] == len(images["train"]) and body["split"]["eval"] == len(
        images["eval"]
    )
    assert (folder / first["file_name"]).read_text().splitlines()[0].startswith("id,file,subset")
    # the same seed draws the same split; another seed another one
    again = run(api, "labelled", export_type=0, export_format=2, ratio_sample_usage=True,
                train_sample_ratio="0.80", split_seed=7)  # fmt: skip
    assert {
        f for f in files_under(out_dir(server, again) / "train") if f.endswith(".png")
    } == images["train"]
    other = run(api, "labelled", export_type=0, export_format=2, ratio_sample_usage=True,
                train_sample_ratio="0.80", split_seed=8)  # fmt: skip
    assert {
        f for f in files_under(out_dir(server, other) / "train") if f.endswith(".png")
    } != images["train"]

    # searches select exactly the expected samples
    searches: list[tuple[dict[str, Any], set[str]]] = [
        (
            {"search_conditions": [{"label_list": {"labels": [{"name": "3"}, {"name": "5"}], "op": "OR"}}],
             "sample_state": "__ACCEPTED__"},
            {r["id"] for r in labelled if r["labels"][0]["name"] in ("3", "5") and r["state"] == "__ACCEPTED__"},
        ),
        (
            {"search_conditions": [{"metadata": {"props": {"parity": ["even"]}}, "hard": "1"},
                                   {"labeler": "bob", "label_list": {"labels": [{"name": "0", "type": 0}]}}]},
            {r["id"] for r in records if (r["metadata"]["parity"] == "even" and r["hard"])
             or (r["labeler"] == "bob" and r["labels"] and r["labels"][0]["name"] == "0")},
        ),
        (
            {"search_conditions": [{"label_list": {"labels": [{"property": {"pen": ["red"]}}]},
                                    "score": "0.2-0.4", "sample_dir": "digits/7/"}]},
            {r["id"] for r in labelled if r["labels"][0]["property"]["pen"] == "red"
             and 0.2 <= r["score"] <= 0.4 and r["source"].startswith("digits/7/")},
        ),
    ]  # fmt: skip
    for params, wanted in searches:
        assert wanted, params
        found = run(api, "labelled", export_type=3, export_format=2, **params)
        assert found["status"] == "COMPLETED", found
        assert {s["id"] for s in version_lines(out_dir(server, found), found)} == wanted
    state = run(api, "labelled", export_type=1, sample_state="__REJECTED__", export_format=1,
                clear_hard_property=False)  # fmt: skip
    lines = version_lines(out_dir(server, state), state)
    assert {s["id"] for s in lines} == {
        r["id"] for r in records if not r["labels"] and r["state"] == "__REJECTED__"
    }
    assert any(s.get("hard") for s in lines)  # kept

    # a sample whose file is gone is a failed item: partial success
    gone = directory / labelled[0]["source"]
    gone.unlink()
    partial = run(api, "labelled", export_type=2, samples=[r["id"] for r in records[:20]])
    assert partial["status"] == "COMPLETED_WITH_ERRORS", partial
    assert partial["failed_count"] == 1 and partial["finished_count"] == 19
    assert [f["id"] for f in manifest(api, partial)["failed"]] == [labelled[0]["id"]]


def test_new_dataset_is_listable_and_exportable(src: Any, live_server: Any) -> None:
    directory, records = src
    server = live_server(workers=2, source_dirs=[str(directory)])
    api = setup(server, directory)
    threes = {r["id"] for r in records if r["labels"] and r["labels"][0]["name"] == "3"}
    cond = [{"label_list": {"labels": [{"name": "3"}]}}]
    done = run(api, "labelled", export_type=3, search_conditions=cond, export_dest="NEW_DATASET",
               export_new_dataset_name="threes", export_new_dataset_work_path="threes")  # fmt: skip
    assert done["status"] == "COMPLETED", done
    seed = api.http.get(f"/v2/acme/datasets/labelled/export-tasks/{done['task_id']}").json()
    assert seed["export_params"]["export_dest"] == "NEW_DATASET"
    assert seed["export_params"]["export_new_dataset_name"] == "threes"
    assert seed["export_params"]["search_conditions"] == cond
    assert seed["path"] == str(directory / "threes") + "/"

    listed = api.http.get(
        "/v1/projects/acme/datasets/threes/samples", params={"limit": 1000}
    ).json()
    assert {s["id"] for s in listed["samples"]} == threes
    again = run(api, "threes", export_type=0, export_format=1)
    assert again["status"] == "COMPLETED", again
    assert {c: len(f) for c, f in class_folders(out_dir(server, again)).items()} == {
        "3": len(threes)
    }
    r = api.http.post("/v1/projects/acme/exports", json={"dataset_id": "labelled", "sample_export": {
        "export_dest": "NEW_DATASET", "export_new_dataset_name": "threes",
        "export_new_dataset_work_path": "other"}})  # fmt: skip
    assert r.status_code == 409 and r.json()["error_code"] == "DATASET_EXISTS"


def test_bad_requests_are_4xx_and_change_nothing(
    src: Any, live_server: Any, tmp_path: Path
) -> None:
    directory, records = src
    server = live_server(workers=1, source_dirs=[str(directory)])
    api = setup(server, directory)
    bad: list[dict[str, Any]] = [
        {"export_type": 3},
        {"export_type": 0, "search_conditions": [{"labeler": "bob"}]},
        {"export_type": 3, "search_conditions": [{"nickname": "x"}]},
        {"export_type": 3, "search_conditions": [{}]},
        {"export_type": 3, "search_conditions": [{"sample_dir": "digits/3"}]},
        {"export_type": 3, "search_conditions": [{"sample_time": "20260101-20260301"}]},
        {"export_type": 3, "search_conditions": [{"hard": "yes"}]},
        {"export_type": 3, "search_conditions": [{"label_list": {"labels": [{"name": "1"}, {"name": "2"}]}}]},
        {"export_type": 3, "search_conditions": [{"label_list": {"labels": [{"type": 7}]}}]},
        {"export_type": 4},
        {"export_format": 3},
        {"sample_state": "__SOMETIMES__"},
        {"train_sample_ratio": "1.5"},
        {"samples": ["d0001", "nope"]},
        {"export_dest": "NEW_DATASET"},
        {"export_dest": "NEW_DATASET", "export_new_dataset_name": "x", "export_new_dataset_work_path": "/etc"},
        {"export_dest": "NEW_DATASET", "export_new_dataset_name": "x", "export_new_dataset_work_path": "digits"},
        {"export_new_dataset_name": "x"},
        {"version_format": "CarbonData"},
    ]  # fmt: skip
    for params in bad:
        r = api.http.post(
            "/v1/projects/acme/exports", json={"dataset_id": "labelled", "sample_export": params}
        )
        assert r.status_code in (400, 422), (params, r.text)
        assert r.json()["error_code"] and r.json()["error_msg"], r.text
    r = api.http.post("/v1/projects/acme/exports", json={"dataset_id": "labelled", "format": "csv"})
    assert r.status_code == 400
    assert api.http.get("/v1/projects/acme/exports").json()["count"] == 0

    broken = directory / "broken.jsonl"
    for line in ('{"id": "a", "source": "../x.png"}', '{"id": "a"}', "not json",
                 '{"id": "a", "source": "x.png", "labels": [{"name": "a/b"}]}',
                 '{"id": "a", "source": "x.png", "state": "__ALL__"}'):  # fmt: skip
        broken.write_text(line + "\n")
        r = api.http.post(
            "/v1/projects/acme/datasets",
            json={"name": "broken", "kind": "samples", "path": str(broken)},
        )
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_SAMPLES", r.text
    write_manifest(broken, [records[0], records[0]])
    r = api.http.post(
        "/v1/projects/acme/datasets",
        json={"name": "broken", "kind": "samples", "path": str(broken)},
    )
    assert r.status_code == 400, r.text
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    r = api.http.post(
        "/v1/projects/acme/datasets", json={"name": "out", "kind": "samples", "path": str(outside)}
    )
    assert r.status_code == 400, r.text
    assert {d["name"] for d in api.http.get("/v1/projects/acme/datasets").json()["datasets"]} == {
        "tree",
        "labelled",
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_copy_exports_each_sample_once(
    backend: str, src: Any, live_server: Any, request: pytest.FixtureRequest
) -> None:
    directory, _ = src
    store_url = request.getfixturevalue("pg_database") if backend == "postgresql" else None
    server = live_server(
        store_url=store_url, workers=0, source_dirs=[str(directory)], lease_seconds=2.0,
        max_attempts=3,
    )  # fmt: skip
    api = setup(server, directory)
    victim = server.start_worker(concurrency=2, env={"EXPORTD_DEBUG_PAUSE_PER_SAMPLE": "0.03"})
    task = api.export("acme", dataset_id="tree", parallelism=4, sample_export={"export_format": 1})

    def copying(t: dict[str, Any]) -> bool:
        return any(p["status"] == "RUNNING" and p["finished_count"] > 0 for p in t["partitions"])

    api.wait("acme", task["task_id"], timeout=60, until=copying)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    server.start_worker(concurrency=2)
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED", done
    assert max(p["lost_count"] for p in done["partitions"]) >= 1, done["partitions"]
    assert done["finished_count"] == N

    folder = out_dir(server, done)
    names = [f["name"] for f in manifest(api, done)["files"]]
    assert len(names) == len(set(names)) == N
    on_disk = files_under(folder) - {"manifest.json", done["file_name"]}
    assert on_disk == set(names)  # no half file, no copy twice, nothing else
    for name in names:
        assert (folder / name).read_bytes() == (directory / "digits" / name).read_bytes()
    time.sleep(0)  # nothing left under the task's parts either once cleaned up
    parts = server.settings.data_dir / "files" / "parts" / done["task_id"]
    api.wait("acme", done["task_id"], timeout=30, until=lambda _t: not parts.exists())


def test_cancel_mid_copy_leaves_nothing(src: Any, live_server: Any) -> None:
    directory, _ = src
    server = live_server(workers=2, source_dirs=[str(directory)], debug_pause_per_sample=0.02)
    api = setup(server, directory)
    task = api.export("acme", dataset_id="tree", parallelism=2, sample_export={"export_format": 1})
    api.wait(
        "acme", task["task_id"], timeout=60,
        until=lambda t: any(p["finished_count"] > 0 for p in t["partitions"]),
    )  # fmt: skip
    r = api.http.post(f"/v1/projects/acme/exports/{task['task_id']}/cancel")
    assert r.status_code == 202, r.text
    done = api.wait("acme", task["task_id"], timeout=60)
    assert done["status"] == "CANCELED", done
    root = server.settings.data_dir / "files"
    api.wait(
        "acme", task["task_id"], timeout=30,
        until=lambda _t: not [p for p in root.rglob("*") if p.is_file() and task["task_id"] in str(p)],
    )  # fmt: skip


def test_rows_written_counts_the_samples_copied(src: Any, live_server: Any) -> None:
    """`exportd_rows_written` (and `_bytes_written`) grow by the samples a samples export
    copied and their bytes, a failed sample not counted (it is a failed item of the
    status); counters are the test process's (other tests' servers add to them): deltas."""
    from tests.integration.test_operations import scrape, total

    directory, records = src
    server = live_server(workers=2, source_dirs=[str(directory)])
    api = setup(server, directory)
    (directory / records[3]["source"]).unlink()  # one failed item
    url = f"{server.url}/metrics"
    before = scrape(url, server.admin_token)
    done = run(api, "labelled", export_type=2, export_format=1, parallelism=3, allow_partial=True)
    after = scrape(url, server.admin_token)
    assert done["status"] == "COMPLETED_WITH_ERRORS", done
    assert done["finished_count"] == N - 1 and done["failed_count"] == 1
    # the failed sample is an item of the native status, by its id (as in the manifest)
    [item] = done["failed_items"]
    assert item["key"] == records[3]["id"] and item["error_code"] == "SOURCE_FILE_UNREADABLE"

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    body = manifest(api, done)
    assert (
        delta("exportd_rows_written_total") == N - 1 == len({f["sample_id"] for f in body["files"]})
    )
    assert delta("exportd_bytes_written_total") == sum(f["bytes"] for f in body["files"])
    assert delta("exportd_partitions_committed_total") == 3
