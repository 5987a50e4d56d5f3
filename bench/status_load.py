"""The status endpoint under load, over loopback only: the most requests per second that
`concurrency` clients get from `GET .../exports/{id}` (plain, and conditional with
`If-None-Match`), and the latency that `pollers` clients polling once a second see while
an export runs. Bounded in clients and in time."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx


@dataclass
class Load:
    what: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    not_modified: int = 0
    errors: int = 0

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"load is only ever sent to loopback, not to {host}")


async def _client(
    url: str, token: str, path: str, stop: float, pause: float | None, conditional: bool,
    out: list[float], counts: dict[str, int], http: httpx.AsyncClient,
) -> None:  # fmt: skip
    etag: str | None = None
    if pause:
        await asyncio.sleep(random.uniform(0, pause))  # pollers do not start in step
    while time.monotonic() < stop:
        headers = {"If-None-Match": etag} if conditional and etag else {}
        t0 = time.monotonic()
        try:
            r = await http.get(path, headers=headers)
        except httpx.HTTPError:
            counts["errors"] += 1
            continue
        out.append((time.monotonic() - t0) * 1000)
        if r.status_code == 304:
            counts["not_modified"] += 1
        elif r.status_code != 200:
            counts["errors"] += 1
        etag = r.headers.get("etag", etag)
        if pause:
            await asyncio.sleep(pause)


async def _run(
    url: str, token: str, path: str, clients: int, seconds: float, pause: float | None,
    conditional: bool, what: str,
) -> Load:  # fmt: skip
    _loopback(url)
    latencies: list[float] = []
    counts = {"not_modified": 0, "errors": 0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as http:
        t0 = time.monotonic()
        stop = t0 + seconds
        await asyncio.gather(*(
            _client(url, token, path, stop, pause, conditional, latencies, counts, http)
            for _ in range(clients)
        ))  # fmt: skip
        elapsed = time.monotonic() - t0
    return Load(
        what, len(latencies), elapsed, _quantile(latencies, 0.5), _quantile(latencies, 0.99),
        counts["not_modified"], counts["errors"],
    )  # fmt: skip


def saturate(
    url: str, token: str, path: str, clients: int = 32, seconds: float = 8.0,
    conditional: bool = False,
) -> Load:  # fmt: skip
    """As many requests as `clients` back-to-back clients get in `seconds`: with `wrk`
    (C; `apt-get install wrk`) where it is installed, so that the load generator is not
    what is measured (a Python client spends more CPU per request than the server),
    otherwise with httpx."""
    what = f"{clients} clients back to back{', If-None-Match' if conditional else ''}"
    if shutil.which("wrk"):
        return _wrk(url, token, path, clients, seconds, conditional, what)
    what += " (httpx: no wrk here, the client's CPU is what is measured)"
    return asyncio.run(_run(url, token, path, clients, seconds, None, conditional, what))


def _wrk(
    url: str, token: str, path: str, clients: int, seconds: float, conditional: bool, what: str
) -> Load:
    _loopback(url)
    headers = {"Authorization": f"Bearer {token}"}
    first = httpx.get(url + path, headers=headers, timeout=30)
    if conditional:
        headers["If-None-Match"] = first.headers["etag"]
    argv = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run(
        [*argv, url + path], capture_output=True, text=True, timeout=seconds + 60
    ).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if total is None:
        raise RuntimeError(f"wrk said: {out}")
    count, took = int(total.group(1)), float(total.group(2))
    took = took / 1000 if total.group(3) == "ms" else took
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            return 0.0
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    errors = int(bad.group(1)) if bad else 0
    return Load(
        f"{what} (wrk)", count, took, pct("50"), pct("99"),
        count - errors if conditional else 0, errors,
    )  # fmt: skip


def pollers(
    url: str, token: str, path: str, clients: int = 200, seconds: float = 15.0, groups: int = 40
) -> Load:
    """`clients` pollers, each once a second with `If-None-Match`, as a dashboard polls:
    with `h2load` (C++; `apt-get install nghttp2-client`) where it is installed, each of
    its connections paced at one request a second (`--rps 1`), each latency from its
    per-request log; otherwise with httpx, whose own event loop (about 3 ms of CPU a
    request, on the same cores) then adds its lag to what is measured."""
    what = f"{clients} pollers once a second, If-None-Match"
    if shutil.which("h2load"):
        return _h2load(url, token, path, clients, seconds, what, groups)
    what += " (httpx: no h2load here, its event loop's lag is counted)"
    return asyncio.run(_run(url, token, path, clients, seconds, 1.0, True, what))


def _h2load(
    url: str, token: str, path: str, clients: int, seconds: float, what: str, groups: int = 40
) -> Load:
    """h2load's pollers send the tag the task's status had when they started, every time:
    the polled export moves on at once, so every answer is a 200 with the current body
    (the harder case for the server; the 304s are measured by `saturate`).

    The pollers are `groups` h2load processes started 1/groups s apart: one h2load's
    connections all send in the same instant each second, and 200 independent pollers
    (dashboards opened at different times) do not; a single burst of 200 would measure
    how long the server takes to drain a queue of 200, not what a poller waits."""
    import tempfile

    _loopback(url)
    headers = {"Authorization": f"Bearer {token}"}
    headers["If-None-Match"] = httpx.get(url + path, headers=headers, timeout=30).headers["etag"]
    per = [clients // groups + (1 if i < clients % groups else 0) for i in range(groups)]
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, n in enumerate(c for c in per if c):
            argv = [
                "h2load", "--h1", f"-c{n}", f"-D{max(1, round(seconds))}", "--rps=1",
                f"--log-file={tmp}/{i}.tsv", "-t1",
            ]  # fmt: skip
            for k, v in headers.items():
                argv += ["-H", f"{k}: {v}"]
            procs.append(subprocess.Popen(
                [*argv, url + path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ))  # fmt: skip
            time.sleep(1.0 / groups)
        said = [p.communicate(timeout=seconds + 60)[0] for p in procs]
        rows = [
            line.split("\t")
            for i in range(len(procs))
            for line in Path(f"{tmp}/{i}.tsv").read_text().splitlines()
            if line.strip()
        ]
    if not rows:
        raise RuntimeError(f"h2load said: {said}")
    latencies = [int(r[2]) / 1000 for r in rows]  # start (us since the epoch), status, us
    statuses = [int(r[1]) for r in rows]
    took = (max(int(r[0]) for r in rows) - min(int(r[0]) for r in rows)) / 1e6 or seconds
    return Load(
        f"{what} (h2load)", len(rows), took, _quantile(latencies, 0.5),
        _quantile(latencies, 0.99), statuses.count(304),
        sum(1 for s in statuses if s not in (200, 304)),
    )  # fmt: skip
