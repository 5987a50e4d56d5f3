"""The `exportd` command line: run the service or workers, administer projects and
datasets, start and follow exports, and a self-contained demo."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from exportd.cli.client import ClientError, ExportdClient
from exportd.memory import configure_allocator, keep_pandas_out
from exportd.settings import Settings

app = typer.Typer(help="exportd: asynchronous data exports.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects (administrator).", no_args_is_help=True)
tokens_app = typer.Typer(help="Project tokens (administrator).", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets.", no_args_is_help=True)
app.add_typer(projects_app, name="projects")
app.add_typer(tokens_app, name="tokens")
app.add_typer(datasets_app, name="datasets")

console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="data directory (EXPORTD_DATA_DIR)")
]
Url = Annotated[str, typer.Option("--url", envvar="EXPORTD_URL", help="exportd's base URL")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="EXPORTD_TOKEN", help="bearer token (default: admin)"),
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _settings(data_dir: Path | None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


def _client(url: str, token: str | None) -> ExportdClient:
    if token is None:
        path = Settings().data_dir / "admin_token"
        if not path.exists():
            err.print("[red]no token: pass --token or set EXPORTD_TOKEN[/red]")
            raise typer.Exit(2)
        token = path.read_text().strip()
    return ExportdClient(url, token)


def _fail(exc: ClientError) -> NoReturn:
    err.print(f"[red]{exc.status} {exc.error_code}[/red]: {exc.error_msg}")
    raise typer.Exit(1)


@contextmanager
def _api(url: str, token: str | None) -> Iterator[ExportdClient]:
    """A client for one command; an API error ends the command with its code and message."""
    with _client(url, token) as c:
        try:
            yield c
        except ClientError as exc:
            _fail(exc)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    data_dir: DataDir = None,
    workers: Annotated[int | None, typer.Option(help="in-process workers (default 2)")] = None,
) -> None:
    """Run the HTTP API with in-process workers (the embedded deployment)."""
    import uvicorn

    from exportd.api import create_app

    _logging()
    settings = _settings(data_dir, workers=workers)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command()
def worker(
    data_dir: DataDir = None,
    concurrency: Annotated[int, typer.Option(help="worker threads")] = 2,
) -> None:
    """Run workers alone, sharing the store and storage with the API processes."""
    from exportd.runtime import Runtime
    from exportd.worker import WorkerPool

    _logging()
    rt = Runtime(_settings(data_dir))
    pool = WorkerPool(rt, concurrency)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pool.start()
    logging.getLogger("exportd").info("worker running with %d threads", concurrency)
    stop.wait()
    pool.stop(timeout=30)
    rt.close()


@projects_app.command("add")
def projects_add(project_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Create a project."""
    with _api(url, token) as c:
        console.print_json(data=c.create_project(project_id))


@tokens_app.command("create")
def tokens_create(
    project_id: str,
    role: Annotated[str, typer.Option(help="reader, writer or admin")] = "writer",
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create a token for a project (shown once)."""
    with _api(url, token) as c:
        console.print_json(data=c.create_token(project_id, role))


class DatasetKind(StrEnum):
    sql = "sql"
    documents = "documents"
    files = "files"


@datasets_app.command("add")
def datasets_add(
    project_id: str,
    name: str,
    kind: Annotated[DatasetKind, typer.Option(help="sql, documents or files")] = DatasetKind.sql,
    db_url: Annotated[
        str | None, typer.Option("--db-url", help="SQLAlchemy URL of the source database")
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
) -> None:
    """Register a dataset: a SQL table or query, JSON documents (a JSON column or JSON
    Lines files) or files (CSV, JSON Lines, Parquet). The service checks the combination."""
    given = {
        "url": db_url, "key": key, "table": table, "query": query, "document": document,
        "path": path, "file_format": file_format,
    }  # fmt: skip
    body: dict[str, Any] = {"name": name, "kind": kind.value}
    body.update({k: v for k, v in given.items() if v is not None})
    with _api(url, token) as c:
        console.print_json(data=c.add_dataset(project_id, **body))


@datasets_app.command("list")
def datasets_list(project_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """List a project's datasets."""
    with _api(url, token) as c:
        items = c.list_datasets(project_id)
    table = Table("dataset_id", "name", "kind", "key", "fields")
    for d in items:
        table.add_row(d["dataset_id"], d["name"], d["kind"], d["key"], str(len(d["fields"])))
    console.print(table)


def follow(c: ExportdClient, project_id: str, task: dict[str, Any]) -> dict[str, Any]:
    """A live progress bar (stage, counts, rate) until the task ends."""
    columns = (
        TextColumn("[bold]{task.fields[stage]}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.completed:,.0f}/{task.fields[total_text]} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(
            "export", total=100, stage="Not started yet...", total_text="?", rate=""
        )

        def update(t: dict[str, Any]) -> None:
            total = t.get("total_count")
            approx = "~" if t.get("total_is_estimate") else ""
            rate = f"{t['rows_per_second']:,.0f} rows/s" if t.get("rows_per_second") else ""
            progress.update(
                bar,
                completed=t["finished_count"],
                total=max(total or 0, t["finished_count"], 1),
                stage=f"{t['status']} · {t['current_state']['status']}",
                total_text=f"{approx}{total:,}" if total is not None else "?",
                rate=rate,
            )

        return c.wait(project_id, task["task_id"], on_update=update, interval=0.3)


@app.command()
def export(
    project_id: str,
    dataset: str,
    fmt: Annotated[
        str, typer.Option("--format", help="csv, tsv, jsonl, json, parquet or xlsx")
    ] = "csv",
    fields: Annotated[str | None, typer.Option(help="comma-separated fields")] = None,
    filter_json: Annotated[str | None, typer.Option("--filter", help="filter as JSON")] = None,
    file_name: Annotated[str | None, typer.Option(help="output file name")] = None,
    parallelism: Annotated[int | None, typer.Option(help="partitions")] = None,
    allow_partial: Annotated[bool, typer.Option(help="accept partial success")] = False,
    timeout: Annotated[int | None, typer.Option(help="timeout_seconds")] = None,
    wait: Annotated[bool, typer.Option(help="follow with a progress bar")] = True,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Start an export and follow it with a live progress bar."""
    body: dict[str, Any] = {"dataset_id": dataset, "format": fmt, "allow_partial": allow_partial}
    if fields:
        body["fields"] = [f.strip() for f in fields.split(",") if f.strip()]
    if filter_json:
        body["filter"] = json.loads(filter_json)
    for k, v in (
        ("file_name", file_name),
        ("parallelism", parallelism),
        ("timeout_seconds", timeout),
    ):
        if v is not None:
            body[k] = v
    with _api(url, token) as c:
        task = c.create_export(project_id, **body)
        console.print(f"task [bold]{task['task_id']}[/bold] accepted")
        if wait:
            task = follow(c, project_id, task)
            _summary(task)
    if wait and task["status"] not in ("COMPLETED", "COMPLETED_WITH_ERRORS"):
        raise typer.Exit(1)


def _summary(task: dict[str, Any]) -> None:
    console.print(
        f"[bold]{task['status']}[/bold] rows={task['finished_count']:,} "
        f"failed={task['failed_count']:,} bytes={task['bytes_written']:,}"
    )
    if task.get("error_code"):
        console.print(f"[yellow]{task['error_code']}[/yellow]: {task['error_msg']}")


@app.command()
def status(project_id: str, task_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Show an export's full status as JSON."""
    with _api(url, token) as c:
        console.print_json(data=c.get_export(project_id, task_id))


@app.command("list")
def list_(
    project_id: str,
    status_: Annotated[str | None, typer.Option("--status", help="filter by status")] = None,
    limit: Annotated[int, typer.Option(help="1-100")] = 20,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List a project's exports, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status_:
        params["status"] = status_
    with _api(url, token) as c:
        page = c.list_exports(project_id, **params)
    table = Table(title=f"{page['count']} exports")
    table.add_column("task_id", no_wrap=True, min_width=32)
    for name in ("status", "stage", "rows", "file_name", "created"):
        table.add_column(name, no_wrap=name != "file_name")
    for t in page["export_tasks"]:
        table.add_row(
            t["task_id"], t["status"], str(t["current_state"]["status_id"]),
            f"{t['finished_count']:,}", t["file_name"], t["create_time"][:19],
        )  # fmt: skip
    console.print(table)


@app.command()
def cancel(project_id: str, task_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Cancel a running export."""
    with _api(url, token) as c:
        task = c.cancel(project_id, task_id)
    console.print(f"{task_id}: {task['status']}")


@app.command()
def download(
    project_id: str,
    task_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="file or directory")] = Path("."),
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Download an export's file."""
    with _api(url, token) as c:
        path = c.download(project_id, task_id, output)
    console.print(f"saved {path}")


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
    source = data_dir / "demo-flights.db"
    with console.status(f"building the demo dataset ({rows:,} flights) ..."):
        count = build_demo_database(source, rows)
    console.print(f"demo dataset: {source} ({count:,} rows)")

    settings = Settings(data_dir=data_dir, workers=2, database_url=None, storage_url=None)
    port = port or _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            err.print("[red]the service did not start[/red]")
            raise typer.Exit(1)
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    admin = (data_dir / "admin_token").read_text().strip()
    console.print(f"exportd is serving on {url}")
    try:
        with ExportdClient(url, admin) as c:
            token = _demo_project(c, f"sqlite:///{source}")
            with ExportdClient(url, token) as user:
                task = user.create_export(
                    "demo", dataset_id="flights", format="csv", parallelism=4,
                    filter=[{"canceled": {"eq": 0}}, {"dep_delay": {"is_null": True}}],
                )  # fmt: skip
                console.print(f"export task [bold]{task['task_id']}[/bold] accepted")
                task = follow(user, "demo", task)
                _summary(task)
                files = settings.data_dir / "files" / "exports" / "demo" / task["task_id"]
                console.print(f"file:     {files / task['file_name']}", soft_wrap=True)
                console.print(f"manifest: {files / 'manifest.json'}", soft_wrap=True)
        if serve_:
            console.print(f"serving on {url}; project 'demo', token {token}; Ctrl-C stops")
            while thread.is_alive():
                time.sleep(0.5)
        ok = task["status"] == "COMPLETED"
    except ClientError as exc:
        _fail(exc)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    if not ok:
        raise typer.Exit(1)


def _demo_project(c: ExportdClient, db_url: str) -> str:
    try:
        c.create_project("demo")
    except ClientError as exc:
        if exc.status != 409:
            raise
    token = str(c.create_token("demo", "writer")["token"])
    if not any(d["name"] == "flights" for d in c.list_datasets("demo")):
        c.add_dataset("demo", name="flights", kind="sql", url=db_url, table="flights", key="id")
    return token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Arrow's default allocator (mimalloc) keeps what a Parquet part freed and the file's
    # assembly then allocates on top: a worker peaked at 344 MB, 270 MB with malloc's,
    # at the same speed (docs/benchmarks.md). Read by pyarrow at its import; overridable.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    configure_allocator()
    keep_pandas_out()
    app()
