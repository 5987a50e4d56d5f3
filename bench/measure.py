"""Running a command and measuring it: wall time and the peak RSS of the process (from
wait4's rusage), or of exportd's worker processes (VmHWM in /proc)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Result:
    scenario: str
    tool: str
    rows: int
    seconds: float
    peak_rss_mb: float
    note: str = ""
    runs: list[float] = field(default_factory=list)  # seconds of each alternated round
    ratio: float | None = None  # median of the rounds' tool / embedded-default times

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def run_process(argv: list[str], stdout: Path | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, error text or '') of one command. GNU time reports the
    peak RSS: a child forked from this (large) process would count our pages too."""
    rss_file = Path(f"/tmp/bench-rss-{os.getpid()}")
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv]
    sink = open(stdout, "wb") if stdout else contextlib.nullcontext(subprocess.DEVNULL)  # noqa: SIM115
    with sink as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
        _, status, _usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - t0
    rss_kb = int(rss_file.read_text().strip().splitlines()[-1])
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    error = "" if proc.returncode == 0 else (err.strip().splitlines() or ["failed"])[-1][:200]
    return seconds, rss_kb / 1024, error


def tool(name: str, source: str, out: Path, *extra: str) -> tuple[float, float, str]:
    from bench.duckdb_env import python
    from bench.tools import DUCKDB_TOOLS

    exe = python() if name in DUCKDB_TOOLS else sys.executable
    return run_process([exe, "-m", "bench.tools", name, source, str(out), *extra])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Api:
    """An exportd API process started with `env` and these `serve` arguments."""

    def __init__(self, env: dict[str, str], port: int, *serve_args: str) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.api = subprocess.Popen(
            [sys.executable, "-m", "exportd", "serve", "--port", str(port), *serve_args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.http = httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": "Bearer bench-admin"}
        )
        for _ in range(200):
            try:
                if self.http.get("/openapi.json").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

    def setup(self, datasets: dict[str, dict[str, Any]]) -> None:
        self.http.post("/v1/projects", json={"project_id": "bench"})
        for name, body in datasets.items():
            r = self.http.post("/v1/projects/bench/datasets", json={"name": name, **body})
            assert r.status_code < 300, r.text

    def run(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """(seconds from the request to a terminal status, the final task)."""
        t0 = time.monotonic()
        task: dict[str, Any] = self.http.post("/v1/projects/bench/exports", json=body).json()
        while not task.get("is_terminal"):
            time.sleep(0.05)
            task = self.http.get(f"/v1/projects/bench/exports/{task['task_id']}").json()
        return time.monotonic() - t0, task

    def close(self) -> None:
        self.api.terminate()
        self.api.wait()


def _body(
    dataset: str, fmt: str, parallelism: int, options: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "dataset_id": dataset, "format": fmt, "parallelism": parallelism,
        "format_options": options or {},
    }  # fmt: skip


def _outcome(task: dict[str, Any]) -> tuple[int, str]:
    error = "" if task["status"] == "COMPLETED" else f"{task['status']}: {task.get('error_msg')}"
    return int(task.get("finished_count") or 0), error


class Embedded(_Api):
    """exportd as a newcomer runs it: `exportd serve` with its defaults (its SQLite store
    and storage in the data directory, its default workers), nothing else set."""

    def __init__(self, data_dir: Path, port: int = 8766, source_dir: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTD_")}
        env.update(
            EXPORTD_DATA_DIR=str(data_dir), EXPORTD_ADMIN_TOKEN="bench-admin",
            EXPORTD_SOURCE_DIRS=json.dumps([str(source_dir)] if source_dir else []),
        )  # fmt: skip
        super().__init__(env, port)

    def processes(self) -> list[int]:
        """The serve process and any worker processes it runs."""
        pids = [self.api.pid]
        children = Path(f"/proc/{self.api.pid}/task/{self.api.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def export(
        self, dataset: str, fmt: str, parallelism: int = 4,
        options: dict[str, Any] | None = None,
    ) -> tuple[float, float, int, str]:  # fmt: skip
        """(seconds request -> COMPLETED, peak RSS of its processes so far, rows, error)."""
        seconds, task = self.run(_body(dataset, fmt, parallelism, options))
        rss = max(peak_rss_mb(p) for p in self.processes())
        return seconds, rss, *_outcome(task)


class Exportd(_Api):
    """exportd as deployed: one API process (no workers) and N worker processes sharing a
    PostgreSQL store and a local storage directory."""

    def __init__(
        self, data_dir: Path, store_url: str, port: int = 8765, source_dir: Path | None = None
    ) -> None:
        env = dict(os.environ)
        env.update(
            EXPORTD_DATA_DIR=str(data_dir), EXPORTD_DATABASE_URL=store_url,
            EXPORTD_ADMIN_TOKEN="bench-admin", EXPORTD_WORKERS="0",
            EXPORTD_SOURCE_DIRS=json.dumps([str(source_dir)] if source_dir else []),
        )  # fmt: skip
        super().__init__(env, port, "--workers", "0")

    @contextlib.contextmanager
    def workers(
        self, count: int, threads: int = 1, fast: bool = True
    ) -> Iterator[list[subprocess.Popen[bytes]]]:
        """`count` `exportd worker` processes of `threads` threads each, up and idle when
        the block starts (what is measured is the export), stopped when it ends."""
        env = dict(self.env, EXPORTD_FAST_PATHS="true" if fast else "false")
        argv = [sys.executable, "-m", "exportd", "worker", "--concurrency", str(threads)]
        procs = [
            subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)
        ]
        try:
            time.sleep(4.0)
            yield procs
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()

    def export(
        self, dataset: str, fmt: str, workers: int, fast: bool = True, parallelism: int = 4,
        options: dict[str, Any] | None = None, threads: int = 1,
        extra: dict[str, Any] | None = None,
    ) -> tuple[float, float, int, str]:  # fmt: skip
        """(seconds request -> COMPLETED, peak RSS of the largest worker, rows, error);
        each worker process runs `threads` worker threads (`--concurrency`)."""
        with self.workers(workers, threads, fast) as procs:
            seconds, task = self.run({**_body(dataset, fmt, parallelism, options), **(extra or {})})
            rss = max(peak_rss_mb(p.pid) for p in procs)
        return seconds, rss, *_outcome(task)
