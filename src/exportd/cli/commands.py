"""The `exportd` command line: run the service or workers, administer projects, tokens and
datasets, start and follow exports, and a self-contained demo.

Every failure is one line on stderr, never a traceback, and the exit code says what
happened (`ExitCode`; README "The command line"). Every client command takes `--json`
(the API's JSON on stdout, nothing else) and `--quiet` (only the one value a script
needs: a task id, a path). Client commands find their token in `--token`/`EXPORTD_TOKEN`,
else in the data directory of the server on this machine (`--data-dir`/`EXPORTD_DATA_DIR`,
`DATA_DIR/admin_token`)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.progress import Task as BarTask
from rich.table import Table
from rich.text import Text

from exportd.cli.client import (
    ApiError,
    Client,
    ExportdError,
    RequestRefused,
    ServerError,
    ServerUnreachable,
    Task,
    WaitTimeout,
)
from exportd.memory import configure_allocator, keep_pandas_out
from exportd.settings import Settings
from exportd.version import __version__


class ExitCode(IntEnum):
    """What the command's exit status means (documented in the README)."""

    OK = 0
    TASK_FAILED = 1  # the task ended FAILED, CANCELED or TIMEOUT (or exportd itself broke)
    USAGE = 2  # bad arguments or options; a local file that cannot be read or written
    UNREACHABLE = 3  # no connection to the server, or it kept failing (5xx)
    REFUSED = 4  # the server refused the request (4xx)
    PARTIAL = 5  # the task ended COMPLETED_WITH_ERRORS


OUTCOME = {"COMPLETED": ExitCode.OK, "COMPLETED_WITH_ERRORS": ExitCode.PARTIAL}
CLI_RETRY_SECONDS = 5.0  # refused connections and 5xx retried this long before giving up
DEFAULT_URL = "http://127.0.0.1:8000"

app = typer.Typer(
    help="exportd: asynchronous data exports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
projects_app = typer.Typer(help="Projects (administrator).", no_args_is_help=True)
tokens_app = typer.Typer(help="Project tokens (admin role).", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets.", no_args_is_help=True)
connections_app = typer.Typer(
    help="Connection profiles: the databases projects may read (administrator).",
    no_args_is_help=True,
)
app.add_typer(projects_app, name="projects")
app.add_typer(connections_app, name="connections")
app.add_typer(tokens_app, name="tokens")
app.add_typer(datasets_app, name="datasets")

console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="EXPORTD_DATA_DIR",
        help="the server's data directory",
        show_default=False,
    ),
]
Url = Annotated[str, typer.Option("--url", envvar="EXPORTD_URL", help="exportd's base URL")]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="EXPORTD_TOKEN",
        help="bearer token (default: DATA_DIR/admin_token)",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print the API's JSON only")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print only the essential value")]
ProjectArg = Annotated[str, typer.Argument(help="project id", show_default=False)]
TaskArg = Annotated[str, typer.Argument(help="task id", show_default=False)]


@dataclass(frozen=True)
class Out:
    """How a command prints: JSON only, the essential value only, or for people."""

    json: bool
    quiet: bool

    def emit(self, data: Any, human: Callable[[], None], value: str | None = None) -> None:
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        elif self.quiet:
            if value is not None:
                sys.stdout.write(value + "\n")
        else:
            human()

    @property
    def live(self) -> bool:
        return not (self.json or self.quiet)


# ---- connecting ------------------------------------------------------------------------------


class UsageProblem(typer.TyperException):
    """A usage error found by a command itself (exit 2, one line)."""

    exit_code = 2


def _token(token: str | None, data_dir: Path | None) -> str:
    """The token given, else the administrator token of the server's data directory."""
    if token:
        return token
    path = (data_dir or Settings().data_dir) / "admin_token"
    try:
        return path.read_text().strip()
    except OSError:
        raise UsageProblem(
            f"no token: pass --token, set EXPORTD_TOKEN, or point --data-dir (EXPORTD_DATA_DIR) "
            f"at the server's data directory ({path} not found)"
        ) from None


@contextmanager
def _api(url: str, token: str | None, data_dir: Path | None) -> Iterator[Client]:
    with Client(url, _token(token, data_dir), retry_seconds=CLI_RETRY_SECONDS) as c:
        yield c


def _logging(fmt: str | None = None) -> None:
    """Log lines on stderr: text, or JSON (`EXPORTD_LOG_FORMAT=json`), each naming its
    unit of work (see `exportd.logs`)."""
    from exportd.logs import configure

    configure(fmt)


def _share_metrics(data_dir: Path) -> None:
    """The worker processes of `serve` count in files of a directory of the server's
    (prometheus_client's multiprocess mode: `prometheus/` in the data directory, emptied
    at each start), so that the API's /metrics adds up theirs."""
    import shutil

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = data_dir / "prometheus"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _settings(data_dir: Path | None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"exportd {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """exportd: asynchronous data exports."""


# ---- running the service ------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="data directory (EXPORTD_DATA_DIR)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="in-process workers (default 2)")] = None,
    worker_processes: Annotated[
        bool | None,
        typer.Option(
            "--worker-processes/--worker-threads",
            help="run the workers as processes of their own (the default) or as threads of "
            "the API's process (EXPORTD_WORKER_PROCESSES)",
        ),
    ] = None,
) -> None:
    """Run the HTTP API with its workers (the embedded deployment)."""
    import uvicorn

    settings = _settings(data_dir, workers=workers)
    if worker_processes is None and "worker_processes" not in settings.model_fields_set:
        worker_processes = True  # the fast shape, unless EXPORTD_WORKER_PROCESSES says no
    if worker_processes is not None:
        settings = settings.model_copy(update={"worker_processes": worker_processes})
    _logging(settings.log_format)
    if settings.worker_processes and settings.workers:
        _share_metrics(settings.data_dir)  # before prometheus_client is imported (exportd.api)

    from exportd.api import create_app

    where = (
        "EXPORTD_ADMIN_TOKEN"
        if settings.admin_token
        else str((settings.data_dir / "admin_token").resolve())
    )
    console.print(f"exportd on http://{host}:{port}; admin token in {where}", soft_wrap=True)
    from exportd.logs import UVICORN_LOG_CONFIG

    config = uvicorn.Config(  # SIGTERM: open requests get the grace too, then the workers theirs
        create_app(settings), host=host, port=port, log_level="info",
        log_config=UVICORN_LOG_CONFIG,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)),
    )  # fmt: skip
    server = _graceful_server()(config)
    server.run()
    if not server.started:  # the port was taken, the app failed to start, ...
        raise typer.Exit(3)  # uvicorn's own status for a failed start


def _graceful_server() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, except that a stop it finished gracefully on SIGTERM (or
        SIGINT) ends the process with status 0. uvicorn raises the caught signal again
        once it has shut down, so that the default action kills the process (status
        -15 for SIGTERM), which a service manager or a test reads as a crash."""

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # still inside uvicorn's block: what it would raise again once it is left
                self._captured_signals.clear()

    return GracefulServer


@app.command()
def worker(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="data directory (EXPORTD_DATA_DIR)")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="worker threads")] = 2,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve Prometheus metrics on this port (EXPORTD_METRICS_PORT)"),
    ] = None,
    metrics_addr: Annotated[
        str | None,
        typer.Option(help="address of the metrics port (EXPORTD_METRICS_ADDR, 127.0.0.1)"),
    ] = None,
) -> None:
    """Run workers alone, sharing the store and storage with the API processes."""
    from exportd import metrics
    from exportd.execution.pool import WorkerPool
    from exportd.runtime import Runtime

    settings = _settings(data_dir, metrics_port=metrics_port, metrics_addr=metrics_addr)
    _logging(settings.log_format)
    rt = Runtime(settings)
    if settings.metrics_port is not None:
        port = metrics.serve(settings.metrics_port, settings.metrics_addr)
        logging.getLogger("exportd").info(
            "worker metrics on http://%s:%d/metrics", settings.metrics_addr, port
        )
    pool = WorkerPool(rt, concurrency)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pool.start()
    logging.getLogger("exportd").info("worker running with %d threads", concurrency)
    stop.wait()
    logging.getLogger("exportd").info("worker stopping: no more claims")
    pool.stop()  # within shutdown_grace_seconds, then the leases in hand are handed back
    rt.close()


# ---- projects and tokens ------------------------------------------------------------------


@projects_app.command("add")
def projects_add(
    project_id: ProjectArg,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Create a project (administrator token); shows its webhook secret once."""
    with _api(url, token, data_dir) as c:
        made = c.create_project(project_id)
    Out(json_, quiet).emit(
        made,
        lambda: console.print(
            f"project [bold]{project_id}[/bold] created; webhook secret "
            f"{made['webhook_secret']} (shown once)",
            soft_wrap=True,
        ),
        project_id,
    )


DURATION = re.compile(r"^(\d+)([smhdw]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds from `90`, `90s`, `15m`, `12h`, `30d` or `2w`."""
    m = DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 3600, 90m, 12h, 30d or 2w")
    return int(m.group(1)) * UNITS[m.group(2)]


def _short(value: datetime | None) -> str:
    """A local time in 11 columns (lists fit 80 columns; `--json` has the full time)."""
    return value.astimezone().strftime("%m-%d %H:%M") if value else "-"


def _brief(value: datetime | None) -> str:
    """A local time in 5 columns: the hour today, else the day."""
    if value is None:
        return "-"
    local = value.astimezone()
    return local.strftime("%H:%M" if local.date() == datetime.now().date() else "%m-%d")


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


@tokens_app.command("create")
def tokens_create(
    project_id: ProjectArg,
    role: Annotated[str, typer.Option(help="reader, writer or admin")] = "writer",
    name: Annotated[str | None, typer.Option(help="what it is for")] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="e.g. 3600, 12h, 30d (default: never)")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Create a token for a project; the token is shown this once."""
    seconds = parse_duration(expires_in) if expires_in else None
    with _api(url, token, data_dir) as c:
        made = c.create_token(project_id, role, name=name, expires_in=seconds)
    data = {
        "token": made.token, "token_id": made.token_id, "project_id": made.project_id,
        "role": made.role, "name": made.name, "expires_time": made.expires_time,
    }  # fmt: skip
    Out(json_, quiet).emit(
        data,
        lambda: console.print(
            f"token {made.token}\n  id {made.token_id}, role {made.role}, expires "
            f"{_when(made.expires_time) if made.expires_time else 'never'} (shown once)",
            soft_wrap=True,
        ),
        made.token,
    )


@tokens_app.command("list")
def tokens_list(
    project_id: ProjectArg,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """List a project's tokens (never their values)."""
    with _api(url, token, data_dir) as c:
        items = c.list_tokens(project_id)

    def human() -> None:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("token_id", no_wrap=True, min_width=16)
        table.add_column("name")
        for name in ("role", "created", "expires", "last used"):
            table.add_column(name, no_wrap=True)
        for t in items:
            expires = "[red]expired[/red]" if t.expired else _short(t.expires_time)
            table.add_row(
                t.token_id, t.name or "", t.role, _short(t.create_time), expires,
                _short(t.last_used_time),
            )  # fmt: skip
        console.print(table)

    data = [{k: v for k, v in vars(t).items() if k != "token"} for t in items]
    Out(json_, quiet).emit(data, human, "\n".join(t.token_id for t in items) or None)


@tokens_app.command("revoke")
def tokens_revoke(
    project_id: ProjectArg,
    token_id: Annotated[str, typer.Argument(help="the token's id (tokens list)")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Revoke a token: refused from now on."""
    with _api(url, token, data_dir) as c:
        c.revoke_token(project_id, token_id)
    Out(json_, quiet).emit(
        {"token_id": token_id, "revoked": True},
        lambda: console.print(f"token {token_id} revoked"),
    )


# ---- connection profiles ------------------------------------------------------------------


@connections_app.command("add")
def connections_add(
    name: Annotated[str, typer.Argument(help="the profile's name")],
    db_url: Annotated[
        str, typer.Option("--db-url", help="SQLAlchemy URL of the database (kept secret)")
    ],
    project: Annotated[
        list[str], typer.Option("--project", help="a project allowed to use it ('*': all)")
    ],
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Create a connection profile; its URL is never shown back."""
    with _api(url, token, data_dir) as c:
        made = c.add_connection(name, db_url, project)
    Out(json_, quiet).emit(
        made.raw,
        lambda: console.print(
            f"connection [bold]{made.name}[/bold] ({made.backend}) for "
            f"{', '.join(made.projects)}; reachable: {made.reachable}"
        ),
        made.name,
    )


@connections_app.command("list")
def connections_list(
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """List the connection profiles (never their URLs)."""
    with _api(url, token, data_dir) as c:
        items = c.list_connections()

    def human() -> None:
        table = Table("name", "backend", "projects", "origin", box=box.SIMPLE)
        for item in items:
            table.add_row(item.name, item.backend, ", ".join(item.projects), item.origin or "")
        console.print(table)

    Out(json_, quiet).emit([i.raw for i in items], human, "\n".join(i.name for i in items) or None)


@connections_app.command("remove")
def connections_remove(
    name: Annotated[str, typer.Argument(help="the profile's name")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Remove a connection profile: datasets on it stop working until it is back."""
    with _api(url, token, data_dir) as c:
        c.delete_connection(name)
    Out(json_, quiet).emit(
        {"name": name, "removed": True}, lambda: console.print(f"connection {name} removed")
    )


# ---- datasets -----------------------------------------------------------------------------


class DatasetKind(StrEnum):
    sql = "sql"
    documents = "documents"
    files = "files"


@datasets_app.command("add")
def datasets_add(
    project_id: ProjectArg,
    name: Annotated[str, typer.Argument(help="the dataset's name")],
    kind: Annotated[DatasetKind, typer.Option(help="sql, documents or files")] = DatasetKind.sql,
    connection: Annotated[
        str | None,
        typer.Option("--connection", help="a connection profile granted to the project"),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option("--db-url", help="SQLAlchemy URL of the source (administrator token only)"),
    ] = None,
    key: Annotated[str | None, typer.Option(help="partitioning key column")] = None,
    table: Annotated[str | None, typer.Option(help="table name")] = None,
    query: Annotated[str | None, typer.Option(help="read-only SELECT")] = None,
    document: Annotated[
        str | None, typer.Option(help="documents in a database: the JSON column")
    ] = None,
    path: Annotated[
        str | None,
        typer.Option(help="files, or JSON Lines documents: an absolute path or glob"),
    ] = None,
    file_format: Annotated[
        str | None, typer.Option("--file-format", help="files: csv, jsonl or parquet")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Register a dataset: a SQL table or query (on a connection profile), JSON documents
    (a JSON column or JSON Lines files) or files (CSV, JSON Lines, Parquet). The service
    checks the combination."""
    body = {
        "name": name, "kind": kind.value, "connection": connection, "url": db_url, "key": key,
        "table": table,
        "query": query, "document": document, "path": path, "file_format": file_format,
    }  # fmt: skip
    with _api(url, token, data_dir) as c:
        ds = c.add_dataset(project_id, **body)
    Out(json_, quiet).emit(
        ds.raw,
        lambda: console.print(
            f"dataset [bold]{ds.name}[/bold] ({ds.dataset_id}, {ds.kind}): "
            f"{len(ds.fields)} fields, key {ds.key or '-'}"
        ),
        ds.dataset_id,
    )


@datasets_app.command("list")
def datasets_list(
    project_id: ProjectArg,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """List a project's datasets."""
    with _api(url, token, data_dir) as c:
        items = c.list_datasets(project_id)

    def human() -> None:
        table = Table("name", "dataset_id", "kind", "key", "fields", box=box.SIMPLE)
        for d in items:
            table.add_row(d.name, d.dataset_id, d.kind, d.key or "", str(len(d.fields)))
        console.print(table)

    Out(json_, quiet).emit([d.raw for d in items], human, "\n".join(d.name for d in items) or None)


# ---- following a task ---------------------------------------------------------------------


class ClockColumn(ProgressColumn):
    """Time since the task was created, ticking on the display's own refresh (so it keeps
    running while no update comes, e.g. during the file's assembly) until the task ends."""

    def render(self, task: BarTask) -> Text:
        since: datetime | None = task.fields.get("since")
        until: datetime | None = task.fields.get("until")
        if since is None:
            return Text("--:--", style="progress.elapsed")
        seconds = ((until or datetime.now(UTC)) - since).total_seconds()
        return Text(_clock(seconds), style="progress.elapsed")


class EtaColumn(ProgressColumn):
    """The server's ETA (`eta_seconds`), counted down between updates."""

    def render(self, task: BarTask) -> Text:
        due: float | None = task.fields.get("eta_due")
        if due is None:
            return Text("")
        return Text("ETA " + _clock(max(0.0, due - time.monotonic())), style="progress.remaining")


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def _line(t: Task) -> str:
    total = f"{'~' if t.total_is_estimate else ''}{t.total_count:,}" if t.total_count else "?"
    return f"{t.status} · {t.stage.status} {t.finished_count:,}/{total} rows"


class Follower:
    """Shows a task's updates: a live bar on a terminal (stage, %, rows, rate, ETA and a
    clock), one line per status or stage change elsewhere (logs, pipes)."""

    def __init__(self, first: Task) -> None:
        self.since = first.create_time
        self.progress: Progress | None = None
        self.last_key: tuple[str, int] | None = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[stage]}"),
                BarColumn(bar_width=24),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[rows]}"),
                TextColumn("{task.fields[rate]}"),
                EtaColumn(),
                ClockColumn(),
                console=console,
            )
            self.bar = self.progress.add_task(
                "export", total=100, stage="", rows="", rate="", since=self.since
            )

    def __enter__(self) -> Follower:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def update(self, t: Task) -> None:
        if self.progress is None:
            key = (t.status, t.stage.status_id)
            if key != self.last_key:
                self.last_key = key
                console.print(_line(t), soft_wrap=True)
            return
        total = f"{'~' if t.total_is_estimate else ''}{t.total_count:,}" if t.total_count else "?"
        self.progress.update(
            self.bar,
            completed=t.progress,
            stage=f"{t.status} · {t.stage.status}",
            rows=f"{t.finished_count:,}/{total} rows",
            rate=f"{t.rows_per_second:,.0f} rows/s" if t.rows_per_second else "",
            eta_due=None if t.eta_seconds is None else time.monotonic() + t.eta_seconds,
            until=(t.end_time or datetime.now(UTC)) if t.is_terminal else None,
        )


def follow(c: Client, project_id: str, first: Task, out: Out) -> Task:
    """Follow the task live until it ends (the display only for people)."""
    if not out.live:
        return c.wait(project_id, first.task_id)
    with Follower(first) as f:
        f.update(first)
        final = c.wait(project_id, first.task_id, on_update=f.update)
        f.update(final)
    return final


def _summary(t: Task) -> None:
    console.print(
        f"[bold]{t.status}[/bold] rows={t.finished_count:,} failed={t.failed_count:,} "
        f"bytes={t.bytes_written:,}"
    )
    if t.error_code:
        console.print(f"[yellow]{t.error_code}[/yellow]: {t.error_msg}", soft_wrap=True)


def _hint(project_id: str, t: Task, saved: Path | None) -> None:
    """Where the result is: the saved file, else how to get it."""
    if saved is not None:
        console.print(f"saved {saved}", soft_wrap=True)
    elif t.data_files:
        console.print(f"download: exportd download {project_id} {t.task_id} -o .", soft_wrap=True)
        for f in t.data_files:
            if f.url:
                console.print(f"  or {f.url}", soft_wrap=True)


def _outcome(t: Task) -> ExitCode:
    return OUTCOME.get(t.status, ExitCode.TASK_FAILED)


def _fields(text: str) -> list[str | dict[str, str]]:
    """`id,dep_delay:delay` -> ["id", {"name": "dep_delay", "as": "delay"}]."""
    specs: list[str | dict[str, str]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, alias = part.partition(":")
        if sep and not (name.strip() and alias.strip()):
            raise typer.BadParameter(f"{part!r}: a rename is NAME:NEW_NAME")
        specs.append({"name": name.strip(), "as": alias.strip()} if sep else name)
    return specs


def _filter(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f'not JSON ({exc.msg} at column {exc.colno}); e.g. \'[{{"origin": {{"eq": "JFK"}}}}]\'',
            param_hint="'--filter'",
        ) from None


def _format_options(pairs: list[str]) -> dict[str, Any] | None:
    """`-O delimiter=';' -O header=false` -> {"delimiter": ";", "header": False}: values
    read as JSON where they are (numbers, true/false, null), else as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'-O'")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options or None


def _writable(output: Path) -> Path:
    """`-o`: an existing directory, or a file in one (checked before anything is asked)."""
    if output.is_dir():
        return output
    parent = output.parent
    if not parent.is_dir():
        raise typer.BadParameter(f"{parent} is not a directory", param_hint="'-o'")
    if output.exists() and not os.access(output, os.W_OK):
        raise typer.BadParameter(f"{output} cannot be written", param_hint="'-o'")
    if not os.access(parent, os.W_OK):
        raise typer.BadParameter(f"{parent} cannot be written", param_hint="'-o'")
    return output


@app.command()
def export(
    project_id: ProjectArg,
    dataset: Annotated[str, typer.Argument(help="dataset name or id")],
    fmt: Annotated[
        str, typer.Option("--format", help="csv, tsv, jsonl, json, parquet or xlsx")
    ] = "csv",
    fields: Annotated[
        str | None, typer.Option(help="comma-separated fields; NAME:NEW renames")
    ] = None,
    filter_json: Annotated[str | None, typer.Option("--filter", help="filter as JSON")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="format option KEY=VALUE (repeatable)"),
    ] = None,
    compression: Annotated[str | None, typer.Option(help="gzip or zstd (text formats)")] = None,
    max_rows_per_file: Annotated[int | None, typer.Option(help="split: rows per file")] = None,
    max_bytes_per_file: Annotated[int | None, typer.Option(help="split: bytes per file")] = None,
    file_name: Annotated[str | None, typer.Option(help="output file name")] = None,
    parallelism: Annotated[int | None, typer.Option(help="partitions")] = None,
    allow_partial: Annotated[bool, typer.Option(help="accept partial success")] = False,
    max_error_rate: Annotated[
        float | None, typer.Option(help="with --allow-partial: highest failed share")
    ] = None,
    timeout: Annotated[int | None, typer.Option(help="timeout_seconds")] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="files kept for, e.g. 7d")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="the same key: the same task")
    ] = None,
    wait: Annotated[bool, typer.Option(help="follow it until it ends")] = True,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="download the file here when done")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Start an export and follow it live; exits 0 when COMPLETED, 5 when
    COMPLETED_WITH_ERRORS, 1 when FAILED, CANCELED or TIMEOUT."""
    out = Out(json_, quiet)
    target = _writable(output) if output is not None else None
    options: dict[str, Any] = {
        "format": fmt,
        "filter": _filter(filter_json) if filter_json else None,
        "format_options": _format_options(option or []),
        "compression": compression,
        "max_rows_per_file": max_rows_per_file,
        "max_bytes_per_file": max_bytes_per_file,
        "file_name": file_name,
        "parallelism": parallelism,
        "allow_partial": allow_partial,
        "max_error_rate": max_error_rate,
        "timeout_seconds": timeout,
        "expires_in": parse_duration(expires_in) if expires_in else None,
    }
    with _api(url, token, data_dir) as c:
        task = c.create_export(
            project_id,
            dataset,
            fields=_fields(fields) if fields else None,
            idempotency_key=idempotency_key,
            **options,
        )
        if out.live:
            console.print(f"task [bold]{task.task_id}[/bold] accepted")
        if not wait:
            out.emit(task.raw, lambda: None, task.task_id)
            return
        task = follow(c, project_id, task, out)
        saved = None
        if target is not None and task.data_files:
            saved = c.download(project_id, task.task_id, target)

    def human() -> None:
        _summary(task)
        _hint(project_id, task, saved)

    out.emit(task.raw, human, str(saved or task.task_id))
    raise typer.Exit(_outcome(task))


@app.command("import")
def import_(
    project_id: ProjectArg,
    dataset: Annotated[str, typer.Argument(help="a writable sql dataset (name or id)")],
    file: Annotated[Path | None, typer.Argument(help="a local file to upload and import")] = None,
    path: Annotated[
        str | None, typer.Option(help="instead: a file on the server (see --connection)")
    ] = None,
    connection: Annotated[str | None, typer.Option(help="the files connection of --path")] = None,
    key: Annotated[str | None, typer.Option(help="instead: an object of the project")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv, tsv, jsonl, json or parquet")
    ] = None,
    mode: Annotated[str, typer.Option(help="append, upsert or replace")] = "append",
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="FILE_COLUMN:TABLE_COLUMN, or FILE_COLUMN: to ignore it"),
    ] = None,
    constant: Annotated[
        list[str] | None, typer.Option("--constant", help="TABLE_COLUMN=VALUE (repeatable)")
    ] = None,
    header: Annotated[bool, typer.Option(help="csv/tsv: the first line names columns")] = True,
    null: Annotated[list[str] | None, typer.Option(help="a text read as NULL")] = None,
    delimiter: Annotated[str | None, typer.Option(help="csv: the delimiter")] = None,
    date_format: Annotated[str | None, typer.Option(help="strptime format of dates")] = None,
    datetime_format: Annotated[str | None, typer.Option(help="of timestamps")] = None,
    timezone: Annotated[str | None, typer.Option(help="of naive timestamps")] = None,
    key_column: Annotated[
        list[str] | None, typer.Option("--key-column", help="unique key (upsert's)")
    ] = None,
    max_errors: Annotated[int | None, typer.Option(help="rejected rows allowed")] = None,
    max_error_rate: Annotated[float | None, typer.Option(help="rejected share allowed")] = None,
    allow_partial: Annotated[bool, typer.Option(help="accept rejected rows")] = False,
    parallelism: Annotated[int | None, typer.Option(help="partitions")] = None,
    timeout: Annotated[int | None, typer.Option(help="timeout_seconds")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="the same key: the same task")
    ] = None,
    wait: Annotated[bool, typer.Option(help="follow it until it ends")] = True,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Import a file into a table and follow it live; exits 0 when COMPLETED, 5 when
    COMPLETED_WITH_ERRORS (the rejected rows are in the task's report), 1 otherwise."""
    out = Out(json_, quiet)
    if sum(x is not None for x in (file, path, key)) != 1:
        raise typer.BadParameter("give one of FILE, --path and --key")
    options: dict[str, Any] = {
        "path": path, "connection": connection, "key": key, "format": fmt, "mode": mode,
        "mapping": _import_mapping(mapping or []) or None,
        "constants": dict(_pair(c, "=") for c in constant or []) or None,
        "header": header, "null_values": null, "delimiter": delimiter,
        "date_format": date_format, "datetime_format": datetime_format,
        "timezone": timezone, "key_columns": key_column, "max_errors": max_errors,
        "max_error_rate": max_error_rate, "allow_partial": allow_partial,
        "parallelism": parallelism, "timeout_seconds": timeout,
    }  # fmt: skip
    with _api(url, token, data_dir) as c:
        task = c.create_import(
            project_id, dataset, file=file, idempotency_key=idempotency_key, **options
        )
        if out.live:
            console.print(f"import [bold]{task.task_id}[/bold] accepted")
        if not wait:
            out.emit(task.raw, lambda: None, task.task_id)
            return
        task = follow(c, project_id, task, out)
    out.emit(task.raw, lambda: _summary(task), task.task_id)
    raise typer.Exit(_outcome(task))


def _pair(text: str, sep: str) -> tuple[str, str]:
    name, found, value = text.partition(sep)
    if not found or not name:
        raise typer.BadParameter(f"expected NAME{sep}VALUE, got {text!r}")
    return name, value


def _import_mapping(items: list[str]) -> dict[str, str | None]:
    """`--map FILE:TABLE` renames, `--map FILE:` ignores."""
    return {f: (t or None) for f, t in (_pair(i, ":") for i in items)}


def _status_view(t: Task) -> None:
    _summary(t)
    total = f"{'~' if t.total_is_estimate else ''}{t.total_count:,}" if t.total_count else "?"
    console.print(
        f"stage {t.stage.status_id} {t.stage.status}  {t.progress:.1f}%  "
        f"{t.finished_count:,}/{total} rows"
        + (f"  {t.rows_per_second:,.0f} rows/s" if t.rows_per_second else "")
        + (f"  ETA {_clock(t.eta_seconds)}" if t.eta_seconds is not None else ""),
        soft_wrap=True,
    )
    if t.partitions:
        table = Table("part", "status", "stage", "rows", "attempts", "error", box=box.SIMPLE)
        for p in t.partitions:
            table.add_row(
                str(p.index), p.status, p.stage.status, f"{p.finished_count:,}",
                str(p.attempts or 0), p.error_code or "",
            )  # fmt: skip
        console.print(table)
    for f in t.files:
        console.print(f"{f.kind}: {f.name} rows={f.rows} bytes={f.bytes} sha256={f.sha256}")


@app.command()
def status(
    project_id: ProjectArg,
    task_id: TaskArg,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="follow it live until it ends")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """An export's status; `--watch` follows it live and exits as `export` does
    (`--json --watch`: one JSON line per change)."""
    out = Out(json_, quiet)
    with _api(url, token, data_dir) as c:
        task = c.get_export(project_id, task_id)
        if watch and json_:  # one line per change, the last one the full final status
            task = c.wait(project_id, task_id, on_update=_json_line)
            _json_line(task)
            raise typer.Exit(_outcome(task))
        if watch:
            task = follow(c, project_id, task, out)
    out.emit(task.raw, lambda: _status_view(task), task.status)
    if watch:
        raise typer.Exit(_outcome(task))


def _json_line(t: Task) -> None:
    sys.stdout.write(json.dumps({"event": t.event, **t.raw}, default=str) + "\n")
    sys.stdout.flush()


@app.command("list")
def list_(
    project_id: ProjectArg,
    status_: Annotated[
        list[str] | None, typer.Option("--status", help="filter by status (repeatable)")
    ] = None,
    limit: Annotated[int, typer.Option(help="1-100")] = 20,
    offset: Annotated[int, typer.Option(help="skip this many")] = 0,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """List a project's exports, newest first."""
    with _api(url, token, data_dir) as c:
        page = c.list_exports(project_id, status=status_ or None, limit=limit, offset=offset)

    def human() -> None:
        table = Table(
            box=box.SIMPLE_HEAD, pad_edge=False, caption=f"{len(page.tasks)} of {page.count}"
        )
        table.add_column("task_id", no_wrap=True, min_width=32)
        table.add_column("status", no_wrap=True)
        table.add_column("rows", justify="right", no_wrap=True)
        table.add_column("created", no_wrap=True)
        table.add_column("file", overflow="ellipsis")
        for t in page.tasks:
            done = f"{t.finished_count:,}" + ("" if t.is_terminal else f" {t.progress:.0f}%")
            table.add_row(t.task_id, t.status, done, _brief(t.create_time), t.file_name or "")
        console.print(table)

    data = {"export_tasks": [t.raw for t in page.tasks], "count": page.count}
    Out(json_, quiet).emit(data, human, "\n".join(t.task_id for t in page.tasks) or None)


@app.command()
def cancel(
    project_id: ProjectArg,
    task_id: TaskArg,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Cancel an export (PENDING ends CANCELED at once, RUNNING goes CANCELING)."""
    with _api(url, token, data_dir) as c:
        task = c.cancel(project_id, task_id)
    Out(json_, quiet).emit(
        task.raw, lambda: console.print(f"{task_id}: {task.status}"), task.status
    )


@app.command()
def delete(
    project_id: ProjectArg,
    task_id: TaskArg,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Delete a finished export and its files."""
    with _api(url, token, data_dir) as c:
        c.delete(project_id, task_id)
    Out(json_, quiet).emit(
        {"task_id": task_id, "deleted": True}, lambda: console.print(f"{task_id}: deleted")
    )


@app.command()
def download(
    project_id: ProjectArg,
    task_id: TaskArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="file or directory")] = Path("."),
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Download an export's file."""
    target = _writable(output)
    with _api(url, token, data_dir) as c:
        path = c.download(project_id, task_id, target)
    Out(json_, quiet).emit(
        {"task_id": task_id, "path": str(path), "bytes": path.stat().st_size},
        lambda: console.print(f"saved {path}", soft_wrap=True),
        str(path),
    )


@app.command()
def manifest(
    project_id: ProjectArg,
    task_id: TaskArg,
    url: Url = DEFAULT_URL,
    token: Token = None,
    data_dir: DataDir = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """An export's manifest: its files with rows, bytes and sha256."""
    with _api(url, token, data_dir) as c:
        doc = c.manifest(project_id, task_id)

    def human() -> None:
        console.print(
            f"[bold]{doc.get('status')}[/bold] {doc.get('total_rows', 0):,} rows, "
            f"expires {doc.get('expires_at')}"
        )
        table = Table("file", "rows", "bytes", "sha256", box=box.SIMPLE)
        for f in doc.get("files", []):
            table.add_row(f["name"], f"{f['rows']:,}", f"{f['bytes']:,}", f["sha256"])
        console.print(table)

    sums = "\n".join(f"{f['sha256']}  {f['name']}" for f in doc.get("files", []))
    Out(json_, quiet).emit(doc, human, sums or None)


# ---- the demo -----------------------------------------------------------------------------


@app.command()
def demo(
    serve_: Annotated[bool, typer.Option("--serve", help="keep the service running")] = False,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="where it all goes")] = Path(
        "exportd-demo"
    ),
    rows: Annotated[int, typer.Option(help="rows of the demo dataset")] = 300_000,
    port: Annotated[int, typer.Option(help="port (0: any free one)")] = 0,
) -> None:
    """Start the embedded service with a demo dataset, export it with a live progress bar,
    and print where the file and its manifest are."""
    import uvicorn

    from exportd.api import create_app
    from exportd.cli.demo import build_demo_database

    data_dir = data_dir.resolve()
    source = data_dir / "sources" / "demo-flights.db"  # a source directory of its own
    with console.status(f"building the demo dataset ({rows:,} flights) ..."):
        count = build_demo_database(source, rows)
    console.print(f"demo dataset: {source} ({count:,} rows)", soft_wrap=True)

    settings = Settings(
        data_dir=data_dir,
        workers=2,
        database_url=None,
        storage_url=None,
        source_dirs=[source.parent],
    )
    port = port or _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ServerUnreachable(f"http://127.0.0.1:{port}", "the service did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    admin = (data_dir / "admin_token").read_text().strip()
    console.print(
        f"exportd is serving on {url}; admin token in {data_dir / 'admin_token'}", soft_wrap=True
    )
    try:
        with Client(url, admin) as c:
            token = _demo_project(c, f"sqlite:///{source}")
        with Client(url, token) as user:
            task = user.create_export(
                "demo", "flights", format="csv", parallelism=4,
                filter=[{"canceled": {"eq": 0}}, {"dep_delay": {"is_null": True}}],
            )  # fmt: skip
            console.print(f"export task [bold]{task.task_id}[/bold] accepted")
            task = follow(user, "demo", task, Out(False, False))
        _summary(task)
        files = settings.data_dir / "files" / "exports" / "demo" / task.task_id
        console.print(f"file:     {files / (task.file_name or '')}", soft_wrap=True)
        console.print(f"manifest: {files / 'manifest.json'}", soft_wrap=True)
        if serve_:
            console.print(f"serving on {url}; project 'demo', token {token}; Ctrl-C stops")
            while thread.is_alive():
                time.sleep(0.5)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    raise typer.Exit(_outcome(task))


def _demo_project(c: Client, db_url: str) -> str:
    """The demo project, a writer token of it, and the flights dataset (kept across runs)."""
    try:
        c.create_project("demo")
    except ApiError as exc:
        if exc.status != 409:
            raise
    token = c.create_token("demo", "writer", name="demo").token
    try:
        c.add_connection("demo-flights", db_url, ["demo"])
    except ApiError as exc:
        if exc.status != 409:
            raise
    if not any(d.name == "flights" for d in c.list_datasets("demo")):
        c.add_dataset(
            "demo", name="flights", kind="sql", connection="demo-flights", table="flights", key="id"
        )
    assert token is not None
    return token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the entry point ----------------------------------------------------------------------


def _fail(code: ExitCode, message: str) -> int:
    err.print(f"exportd: {message}", soft_wrap=True, markup=False, highlight=False)
    return int(code)


def run(argv: list[str] | None = None) -> int:
    """Run the command line and turn every failure into one line and its exit code."""
    try:
        result = app(args=argv, prog_name="exportd", standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors (exit_code 2) and ours
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        code = ExitCode.USAGE if exc.exit_code == 2 else ExitCode.TASK_FAILED
        return _fail(code, f"{exc.format_message()}{hint}")
    except typer.Abort:
        return _fail(ExitCode.TASK_FAILED, "interrupted")
    except ServerUnreachable as exc:
        return _fail(ExitCode.UNREACHABLE, str(exc))
    except ServerError as exc:
        return _fail(ExitCode.UNREACHABLE, f"the server failed: {exc}")
    except RequestRefused as exc:
        return _fail(ExitCode.REFUSED, str(exc))
    except WaitTimeout as exc:
        return _fail(ExitCode.TASK_FAILED, str(exc))
    except ExportdError as exc:
        return _fail(ExitCode.UNREACHABLE, str(exc))
    except OSError as exc:
        return _fail(ExitCode.USAGE, str(exc))
    except Exception as exc:
        if os.environ.get("EXPORTD_DEBUG"):
            raise
        return _fail(
            ExitCode.TASK_FAILED,
            f"internal error: {type(exc).__name__}: {exc} (EXPORTD_DEBUG=1 shows where)",
        )
    return int(result) if isinstance(result, int) else 0


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Arrow's default allocator (mimalloc) keeps what a Parquet part freed and the file's
    # assembly then allocates on top: a worker peaked at 344 MB, 270 MB with malloc's,
    # at the same speed (docs/benchmarks.md). Read by pyarrow at its import; overridable.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    configure_allocator()
    keep_pandas_out()
    sys.exit(run())
