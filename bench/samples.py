"""`python -m bench.samples [--files 100000] [--rounds 3]`: a samples export of many small
files in a tree layout (every file hashed into the manifest) side by side with a
straightforward Python script doing the same (`shutil.copyfile` + `hashlib.sha256` of each
file, a manifest of sha256 written) and with `cp -r` of the same selection (no hashes, no
manifest: the floor).

exportd runs as a newcomer runs it: the embedded default `exportd serve` (its SQLite store
and local storage in its data directory, its two worker processes), on a free port. What
is timed is the request to COMPLETED: planning (the tree scanned, the selection placed),
copying, the one `syncfs` per partition that makes the copies durable before a partition
commits (the script and `cp -r` do not sync: they are given a `sync` before each
measurement, not inside it), the manifests. The three run in alternated rounds (the order
rotates) into fresh folders of the same disk; each figure is the median of the rounds,
wall seconds and CPU seconds (user + system: exportd's serve and worker processes, the
script's and cp's own process from wait4). On a shared machine trust the CPU seconds."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import Embedded

CLASSES = 10
TICK = os.sysconf("SC_CLK_TCK")


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


Measure = tuple[float, float, float]  # wall seconds, user CPU seconds, system CPU seconds


def child(argv: list[str]) -> Measure:
    """(wall, user CPU, system CPU seconds) of a command, from wait4."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed")
    return seconds, usage.ru_utime, usage.ru_stime


def cpu_of(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds the processes used so far."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
    return user / TICK, system / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExportdRounds:
    """One embedded default `exportd serve` for every round (warm, as deployed)."""

    def __init__(self, work: Path, tree: Path) -> None:
        self.data = work / "exportd"
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir()
        self.server = Embedded(self.data, port=free_port(), source_dir=tree.parent)
        self.server.setup({"tree": {"kind": "samples", "path": str(tree)}})
        time.sleep(3.0)  # the worker processes up and idle

    def run(self, files: int) -> Measure:
        pids = self.server.processes()
        user0, sys0 = cpu_of(pids)
        before = {pid: cpu_of([pid]) for pid in pids}
        body = {"dataset_id": "tree", "sample_export": {"export_type": 2, "export_format": 1}}
        seconds, task = self._run(body)
        user, system = cpu_of(pids)
        if task["status"] != "COMPLETED" or task["finished_count"] != files:
            raise SystemExit(f"exportd: {task['status']}: {task.get('error_msg')}")
        if os.environ.get("BENCH_VERBOSE"):
            print(json.dumps({k: task[k] for k in ("create_time", "start_time", "end_time")}))
            print({pid: tuple(round(b - a, 2) for a, b in zip(c0, cpu_of([pid]), strict=True))
                   for pid, c0 in before.items()})  # fmt: skip
        shutil.rmtree(self.data / "files" / "exports", ignore_errors=True)
        return seconds, user - user0, system - sys0

    def _run(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """(seconds from the request to a terminal status, the final task), followed by
        long polls as a client does (`?wait=`): the API's CPU is the export's, not that
        of a poll every few milliseconds."""
        http = self.server.http
        t0 = time.monotonic()
        task: dict[str, Any] = http.post("/v1/projects/bench/exports", json=body).json()
        url, since = f"/v1/projects/bench/exports/{task['task_id']}", None
        while not task.get("is_terminal"):
            params = {"wait": 30, **({"since": since} if since is not None else {})}
            reply = http.get(url, params=params)
            task, since = reply.json(), reply.headers.get("X-Task-Version")
        return time.monotonic() - t0, task

    def close(self) -> None:
        self.server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp)")
    parser.add_argument("--script", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.script:  # the straightforward script, in a process of its own
        python_script(*args.script)
        return
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-samples-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = build_tree(work / "src", args.files)
    print(f"{args.files} files of 1 KiB in {CLASSES} class folders, under {work}; "
          f"{args.rounds} alternated rounds, on {os.cpu_count()} cores", flush=True)  # fmt: skip
    exportd = ExportdRounds(work, tree)

    def script() -> Measure:
        out = work / "python"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(["sync"], check=False)
        try:
            return child([sys.executable, "-m", "bench.samples", "--script", str(tree), str(out)])
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def cp() -> Measure:
        out = work / "cp"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(["sync"], check=False)
        try:
            return child(["cp", "-r", str(tree), str(out)])
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def exportd_run() -> Measure:
        subprocess.run(["sync"], check=False)
        return exportd.run(args.files)

    tools: dict[str, Callable[[], Measure]] = {
        "exportd (serve, tree, sha256 manifest)": exportd_run,
        "python: shutil.copyfile + hashlib": script,
        "cp -r (no hashes)": cp,
    }
    names = list(tools)
    runs: dict[str, list[Measure]] = {n: [] for n in names}
    try:
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                m = tools[name]()
                runs[name].append(m)
                print(f"round {r + 1}: {name:<40} {_figures(m)}", flush=True)
    finally:
        exportd.close()
    med = {n: tuple(statistics.median(m[i] for m in runs[n]) for i in range(3)) for n in names}
    print(f"\nmedians of {args.rounds} rounds ({args.files} files):")
    for n in names:
        print(f"  {n:<40} {_figures(med[n])}")
    e, p, c = (med[n] for n in names)
    print(
        f"exportd / python: wall {e[0] / p[0]:.2f}, CPU {(e[1] + e[2]) / (p[1] + p[2]):.2f} "
        f"(user {e[1] / p[1]:.2f}); exportd / cp -r: wall {e[0] / c[0]:.2f}, "
        f"CPU {(e[1] + e[2]) / (c[1] + c[2]):.2f}"
    )


def _figures(m: Measure | tuple[float, ...]) -> str:
    wall, user, system = m
    return f"{wall:7.2f} s wall {user + system:7.2f} s CPU ({user:6.2f} user {system:6.2f} sys)"


if __name__ == "__main__":
    main()
