"""`python -m bench.samples [--files 100000]`: a samples export of many small files in a
tree layout (every file hashed into the manifest), side by side with a straightforward
Python script doing the same (`shutil.copyfile` + `hashlib`, a manifest of sha256) and
with `cp -r` of the same selection (no hashes, no manifest: the floor).

exportd runs as deployed (an API process and `exportd worker` processes over one store;
SQLite here, so that the bench needs no server); what is timed is the request to its
terminal status, planning (the tree scanned, the selection placed), copying and the
manifests included. Each run writes into a fresh folder of the same disk."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import Exportd

CLASSES = 10


def build_tree(root: Path, files: int, size: int = 1024) -> Path:
    """`files` files of `size` random bytes in CLASSES class folders."""
    tree = root / "tree"
    if tree.exists() and sum(1 for _ in tree.rglob("*.bin")) == files:
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    for c in range(CLASSES):
        (tree / f"class{c}").mkdir(parents=True)
    for i in range(files):
        (tree / f"class{i % CLASSES}" / f"{i:07d}.bin").write_bytes(os.urandom(size))
    return tree


def python_script(tree: Path, out: Path) -> None:
    """What a user would write: copy every file of the class folders and hash it."""
    entries = []
    for label in sorted(os.listdir(tree)):
        os.makedirs(out / label, exist_ok=True)
        for name in sorted(os.listdir(tree / label)):
            src, dst = tree / label / name, out / label / name
            shutil.copyfile(src, dst)
            with open(dst, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            entries.append(
                {"name": f"{label}/{name}", "sha256": digest, "bytes": dst.stat().st_size}
            )
    (out / "manifest.json").write_text(json.dumps({"files": entries}))


def timed(what: str, call: object) -> float:
    t0 = time.monotonic()
    call()  # type: ignore[operator]
    seconds = time.monotonic() - t0
    print(f"{what:<40} {seconds:8.2f} s", flush=True)
    return seconds


def exportd_run(work: Path, tree: Path, workers: int, threads: int, parallelism: int) -> float:
    data = work / "exportd"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    with socket.socket() as s:  # not the default port: the machine may be shared
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = Exportd(data, f"sqlite:///{data}/store.db", port=port, source_dir=tree.parent)
    try:
        server.setup({"tree": {"kind": "samples", "path": str(tree)}})
        body = {
            "dataset_id": "tree",
            "parallelism": parallelism,
            "sample_export": {"export_type": 2, "export_format": 1},
        }
        with server.workers(workers, threads):
            seconds, task = server.run(body)
        if os.environ.get("BENCH_VERBOSE"):
            times = {k: task[k] for k in ("create_time", "start_time", "end_time")}
            parts = [
                (p["start_time"], p["end_time"], p["finished_count"]) for p in task["partitions"]
            ]
            print(json.dumps({"times": times, "partitions": parts}, indent=1))
        if task["status"] != "COMPLETED":
            raise SystemExit(f"exportd: {task['status']}: {task.get('error_msg')}")
        print(f"{'exportd (tree, sha256 manifest)':<40} {seconds:8.2f} s  "
              f"({task['finished_count']} samples)", flush=True)  # fmt: skip
        return seconds
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="exportd worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker")
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-samples-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = build_tree(work / "src", args.files)
    subprocess.run(["sync"], check=False)
    print(f"{args.files} files of 1 KiB in {CLASSES} class folders, under {work}")
    results = {}
    results["exportd"] = exportd_run(work, tree, args.workers, args.threads, args.parallelism)
    shutil.rmtree(work / "python", ignore_errors=True)
    results["python"] = timed(
        "python: shutil.copyfile + hashlib", lambda: python_script(tree, work / "python")
    )
    shutil.rmtree(work / "cp", ignore_errors=True)
    results["cp"] = timed(
        "cp -r (no hashes)",
        lambda: subprocess.run(["cp", "-r", str(tree), str(work / "cp")], check=True),
    )
    print(
        f"exportd / python = {results['exportd'] / results['python']:.2f}, "
        f"exportd / cp -r = {results['exportd'] / results['cp']:.2f} "
        f"(on {os.cpu_count()} cores, {sys.platform})"
    )


if __name__ == "__main__":
    main()
