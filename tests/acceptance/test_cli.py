"""The command line against a running service, as a user would type it (subprocesses);
its exit codes, its one-line errors, and the demo."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exportd.model import TaskStatus
from tests.integration.test_terminal_statuses import reach
from tests.support import free_port


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exportd", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The failure was told in one line on stderr, never with a traceback."""
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exportd: "), result.stderr
    return lines[0]


def cli_env(server: Any, token: str | None = None) -> dict[str, str]:
    env = server.env() | {"EXPORTD_URL": server.url, "COLUMNS": "80"}
    if token:
        env["EXPORTD_TOKEN"] = token
    return env


def test_cli_round_trip(sqlite_source: str, live_server: Any, tmp_path: Path) -> None:
    """Projects, tokens, datasets, an export with renamed fields and format options
    downloaded at the end, status, list and manifest; the admin token found in the data
    directory (EXPORTD_DATA_DIR) without being given."""
    server = live_server(workers=2)
    env = cli_env(server)  # no EXPORTD_TOKEN: the data directory's admin_token
    assert run(["projects", "add", "cli", "-q"], env).stdout.strip() == "cli"
    made = run(["tokens", "create", "cli", "--role", "writer", "--name", "ci", "--json"], env)
    token = json.loads(made.stdout)["token"]
    added = run(
        ["datasets", "add", "cli", "flights", "--db-url", sqlite_source, "--table", "flights",
         "--key", "id"],
        env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert sqlite_source not in added.stdout  # the URL is never shown back

    user = env | {"EXPORTD_TOKEN": token}
    assert "flights" in run(["datasets", "list", "cli"], user).stdout
    export = ["export", "cli", "flights", "--fields", "id,carrier:airline", "--filter",
              '[{"id": {"lte": 1000}}]', "-O", "delimiter=;", "--parallelism", "2",
              "--file-name", "first.csv", "--idempotency-key", "k-1"]  # fmt: skip
    out = run([*export, "-o", str(tmp_path)], user)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "COMPLETED rows=1,000" in out.stdout
    assert f"saved {tmp_path / 'first.csv'}" in out.stdout.replace("\n", "")
    task_id = out.stdout.split("task ")[1].split()[0]
    with open(tmp_path / "first.csv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    assert rows[0] == ["id", "airline"] and len(rows) == 1001
    again = run([*export, "--json"], user)  # the same key and body: the same task
    assert again.returncode == 0 and json.loads(again.stdout)["task_id"] == task_id

    status = json.loads(run(["status", "cli", task_id, "--json"], user).stdout)
    assert status["status"] == "COMPLETED" and status["finished_count"] == 1000
    assert run(["status", "cli", task_id, "-q"], user).stdout.strip() == "COMPLETED"
    assert task_id in run(["list", "cli"], user).stdout
    sums = run(["manifest", "cli", task_id, "-q"], user).stdout.split()
    digest = hashlib.sha256((tmp_path / "first.csv").read_bytes()).hexdigest()
    assert sums == [digest, "first.csv"]

    got = run(["download", "cli", task_id, "-o", str(tmp_path / "again.csv"), "-q"], user)
    assert got.stdout.strip() == str(tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "first.csv").read_bytes()
    assert run(["delete", "cli", task_id, "-q"], user).returncode == 0
    assert task_id not in run(["list", "cli", "-q"], user).stdout


def test_exit_codes_and_one_line_errors(
    sqlite_source: str, live_server: Any, tmp_path: Path
) -> None:
    """2 usage (unknown option, malformed --filter, bad -o, no token), 3 unreachable,
    4 refused (4xx): each one line on stderr, no traceback."""
    server = live_server(workers=1)
    env = cli_env(server)
    assert run(["projects", "add", "codes"], env).returncode == 0
    assert run(["datasets", "add", "codes", "flights", "--db-url", sqlite_source,
                "--table", "flights", "--key", "id"], env).returncode == 0  # fmt: skip

    bad_filter = run(["export", "codes", "flights", "--filter", '{"id": '], env)
    assert bad_filter.returncode == 2 and "--filter" in one_line_error(bad_filter)
    bad_rename = run(["export", "codes", "flights", "--fields", "id:"], env)
    assert bad_rename.returncode == 2 and "rename" in one_line_error(bad_rename)
    unknown = run(["export", "codes", "flights", "--no-such-option"], env)
    assert unknown.returncode == 2 and "no-such-option" in one_line_error(unknown)
    bad_out = run(["download", "codes", "x" * 32, "-o", str(tmp_path / "nope" / "f.csv")], env)
    assert bad_out.returncode == 2 and "-o" in one_line_error(bad_out)
    bad_out = run(["export", "codes", "flights", "-o", str(tmp_path / "nope" / "f.csv")], env)
    assert bad_out.returncode == 2 and "-o" in one_line_error(bad_out)
    assert "codes" not in run(["list", "codes", "-q"], env).stdout  # nothing was started
    no_token = run(["list", "codes"], env | {"EXPORTD_DATA_DIR": str(tmp_path)})
    assert no_token.returncode == 2 and "no token" in one_line_error(no_token)

    down = run(["list", "codes", "--url", f"http://127.0.0.1:{free_port()}"], env)
    assert down.returncode == 3 and "cannot reach exportd" in one_line_error(down)

    field = run(["export", "codes", "flights", "--fields", "nope"], env)
    assert field.returncode == 4 and "400 INVALID_FIELD" in one_line_error(field)
    wrong = run(["list", "codes", "--token", "ext_not-a-token"], env)
    assert wrong.returncode == 4 and "401 UNAUTHORIZED" in one_line_error(wrong)
    missing = run(["status", "codes", "f" * 32], env)
    assert missing.returncode == 4 and "404" in one_line_error(missing)

    version = run(["--version"], env)
    assert version.returncode == 0 and version.stdout.startswith("exportd 0.")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (TaskStatus.COMPLETED, 0),
        (TaskStatus.COMPLETED_WITH_ERRORS, 5),
        (TaskStatus.FAILED, 1),
        (TaskStatus.CANCELED, 1),
        (TaskStatus.TIMEOUT, 1),
    ],
)
def test_watch_exits_with_the_outcome(
    live_server: Any, status: TaskStatus, code: int, tmp_path: Path
) -> None:
    """`status --watch` (and `export`) exit 0 COMPLETED, 5 COMPLETED_WITH_ERRORS, 1 for
    FAILED, CANCELED and TIMEOUT: tasks brought to each end by the store's own moves
    (no workers run here)."""
    server = live_server(workers=0)
    env = cli_env(server)
    assert run(["projects", "add", "acme"], env).returncode == 0
    task = reach(server.app.state.runtime.store, status)
    watched = run(["status", "acme", task.task_id, "--watch"], env)
    assert watched.returncode == code, watched.stdout + watched.stderr
    assert status.value in watched.stdout and "Traceback" not in watched.stderr
    lines = run(["status", "acme", task.task_id, "--watch", "--json"], env)
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert events[0]["event"] == "status" and events[-1]["status"] == status.value
    assert lines.returncode == code


def test_cancel_then_watch_and_live_lines(
    sqlite_source: str, live_server: Any, tmp_path: Path
) -> None:
    """An export started without waiting, canceled: `status --watch` shows its changes
    one line each (stdout is not a terminal here) and exits 1 with CANCELED."""
    server = live_server(workers=1, debug_pause_before_commit=2.0)
    env = cli_env(server)
    assert run(["projects", "add", "slow"], env).returncode == 0
    assert run(["datasets", "add", "slow", "flights", "--db-url", sqlite_source,
                "--table", "flights", "--key", "id"], env).returncode == 0  # fmt: skip
    started = run(["export", "slow", "flights", "--no-wait", "-q", "--parallelism", "2"], env)
    task_id = started.stdout.strip()
    assert started.returncode == 0 and len(task_id) == 32
    assert run(["cancel", "slow", task_id, "-q"], env).stdout.strip() in ("CANCELED", "CANCELING")
    watched = run(["status", "slow", task_id, "--watch"], env)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "CANCELED rows=" in watched.stdout  # the summary
    assert "CANCELED · " in watched.stdout  # the last live line


def test_list_fits_80_columns(sqlite_source: str, live_server: Any) -> None:
    """`list` at 80 columns: one line per task, its id whole, nothing wider than 80."""
    server = live_server(workers=2)
    env = cli_env(server)
    assert run(["projects", "add", "wide"], env).returncode == 0
    assert run(["datasets", "add", "wide", "flights", "--db-url", sqlite_source,
                "--table", "flights", "--key", "id"], env).returncode == 0  # fmt: skip
    ids = []
    for name in ("a-rather-long-file-name-for-a-report-of-flights.csv", "b.csv"):
        out = run(["export", "wide", "flights", "--file-name", name, "-q"], env)
        assert out.returncode == 0, out.stderr
        ids.append(out.stdout.strip())
    listed = run(["list", "wide"], env).stdout
    lines = listed.splitlines()
    assert all(len(line) <= 80 for line in lines), listed
    for task_id in ids:
        [line] = [line for line in lines if task_id in line]
        assert "COMPLETED" in line


def test_cli_connection_profiles(sqlite_source: str, live_server: Any) -> None:
    """`connections add/list/remove` (administrator) and `datasets add --connection` by a
    project admin, who may not give a URL."""
    server = live_server(workers=0)
    env = server.env() | {"EXPORTD_URL": server.url, "EXPORTD_TOKEN": server.admin_token}
    assert run(["projects", "add", "cp"], env).returncode == 0
    admin = run(["tokens", "create", "cp", "--role", "admin", "-q"], env).stdout.strip()
    added = run(
        ["connections", "add", "lite", "--db-url", sqlite_source, "--project", "cp", "--json"],
        env,
    )
    assert added.returncode == 0, added.stderr
    assert sqlite_source not in added.stdout and json.loads(added.stdout)["reachable"] is True
    listed = run(["connections", "list"], env)
    assert "lite" in listed.stdout and "sqlite" in listed.stdout
    assert sqlite_source not in listed.stdout
    project = env | {"EXPORTD_TOKEN": admin}
    by_url = run(["datasets", "add", "cp", "f", "--db-url", sqlite_source, "--table", "flights",
                  "--key", "id"], project)  # fmt: skip
    assert by_url.returncode == 4 and "URL_NOT_ALLOWED" in one_line_error(by_url)
    assert run(["connections", "list"], project).returncode == 4  # the administrator's alone
    ok = run(["datasets", "add", "cp", "f", "--connection", "lite", "--table", "flights",
              "--key", "id", "--json"], project)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["connection"] == "lite"
    assert run(["connections", "remove", "lite", "-q"], env).returncode == 0
    assert "lite" not in run(["connections", "list", "-q"], env).stdout


def test_cli_registers_documents_and_files(live_server: Any, tmp_path: Path) -> None:
    """`datasets add --kind documents|files --path ...`: every dataset kind from the shell."""
    src = tmp_path / "src"
    src.mkdir()
    docs = [{"id": i, "user": {"name": f"u{i}"}, **({"tags": ["a"]} if i % 2 else {})} for i in range(50)]  # fmt: skip
    (src / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (src / "rows.csv").write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(30)))
    server = live_server(workers=2, source_dirs=[src])
    env = server.env() | {"EXPORTD_URL": server.url, "EXPORTD_TOKEN": server.admin_token}
    assert run(["projects", "add", "kinds"], env).returncode == 0
    for name, args in (
        ("docs", ["--kind", "documents", "--path", str(src / "docs.jsonl")]),
        ("rows", ["--kind", "files", "--path", str(src / "*.csv")]),
    ):
        added = run(["datasets", "add", "kinds", name, *args, "--json"], env)
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["kind"] == args[1]
    outside = ["--kind", "files", "--path", "/etc/hosts", "--file-format", "csv"]
    bad = run(["datasets", "add", "kinds", "x", *outside], env)
    assert bad.returncode == 4 and one_line_error(bad).startswith("exportd: 400 "), bad.stderr
    assert "x" not in run(["datasets", "list", "kinds", "-q"], env).stdout.split()

    out = run(["export", "kinds", "docs", "--file-name", "docs.csv"], env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "COMPLETED rows=50" in out.stdout
    assert "download: exportd download kinds" in out.stdout  # the hint at the end
    task_id = out.stdout.split("task ")[1].split()[0]
    assert run(["download", "kinds", task_id, "-o", str(tmp_path)], env).returncode == 0
    with open(tmp_path / "docs.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "user.name", "tags"] and len(rows) == 51
    assert rows[2] == ["1", "u1", '["a"]'] and rows[1] == ["0", "u0", ""]


def test_demo_runs_on_a_fresh_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTD_")}
    result = run(
        ["demo", "--rows", "20000", "--data-dir", str(tmp_path / "demo")], env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED" in result.stdout
    assert f"admin token in {tmp_path / 'demo' / 'admin_token'}" in result.stdout
    [task_dir] = (tmp_path / "demo" / "files" / "exports" / "demo").iterdir()
    manifest = json.loads((task_dir / "manifest.json").read_text())
    [entry] = manifest["files"]
    data = (task_dir / entry["name"]).read_bytes()
    assert entry["rows"] == manifest["total_rows"] > 0
    assert data.count(b"\n") == entry["rows"] + 1  # header + rows (no embedded newlines here)
