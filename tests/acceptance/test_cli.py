"""The command line against a running service, as a user would type it; and the demo."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exportd", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_round_trip(sqlite_source: str, live_server: Any, tmp_path: Path) -> None:
    server = live_server(workers=2)
    env = server.env() | {"EXPORTD_URL": server.url, "EXPORTD_TOKEN": server.admin_token}
    assert run(["projects", "add", "cli"], env).returncode == 0
    made = run(["tokens", "create", "cli", "--role", "writer"], env)
    token = json.loads(made.stdout)["token"]
    added = run(
        [
            "datasets",
            "add",
            "cli",
            "flights",
            "--db-url",
            sqlite_source,
            "--table",
            "flights",
            "--key",
            "id",
        ],
        env,
    )
    assert added.returncode == 0, added.stderr
    assert sqlite_source not in added.stdout  # the URL is never shown back

    user = env | {"EXPORTD_TOKEN": token}
    listed = run(["datasets", "list", "cli"], user)
    assert "flights" in listed.stdout
    out = run(
        ["export", "cli", "flights", "--fields", "id,carrier", "--filter", '[{"id": {"lte": 1000}}]',
         "--parallelism", "2", "--file-name", "first.csv"],
        user,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "COMPLETED rows=1,000" in out.stdout
    task_id = out.stdout.split("task ")[1].split()[0]

    status = json.loads(run(["status", "cli", task_id], user).stdout)
    assert status["status"] == "COMPLETED" and status["finished_count"] == 1000
    assert task_id in run(["list", "cli"], user).stdout
    got = run(["download", "cli", task_id, "-o", str(tmp_path)], user)
    assert got.returncode == 0, got.stderr
    with open(tmp_path / "first.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "carrier"] and len(rows) == 1001

    bad = run(["export", "cli", "flights", "--fields", "nope"], user)
    assert bad.returncode == 1 and "INVALID_FIELD" in bad.stderr


def test_cli_connection_profiles(sqlite_source: str, live_server: Any) -> None:
    """`connections add/list/remove` (administrator) and `datasets add --connection` by a
    project admin, who may not give a URL."""
    server = live_server(workers=0)
    env = server.env() | {"EXPORTD_URL": server.url, "EXPORTD_TOKEN": server.admin_token}
    assert run(["projects", "add", "cp"], env).returncode == 0
    admin = json.loads(run(["tokens", "create", "cp", "--role", "admin"], env).stdout)["token"]
    added = run(["connections", "add", "lite", "--db-url", sqlite_source, "--project", "cp"], env)
    assert added.returncode == 0, added.stderr
    assert sqlite_source not in added.stdout and '"reachable": true' in added.stdout
    listed = run(["connections", "list"], env)
    assert "lite" in listed.stdout and "sqlite" in listed.stdout
    assert sqlite_source not in listed.stdout
    project = env | {"EXPORTD_TOKEN": admin}
    by_url = run(["datasets", "add", "cp", "f", "--db-url", sqlite_source, "--table", "flights",
                  "--key", "id"], project)  # fmt: skip
    assert by_url.returncode == 1 and "URL_NOT_ALLOWED" in by_url.stderr
    assert run(["connections", "list"], project).returncode == 1  # the administrator's alone
    ok = run(["datasets", "add", "cp", "f", "--connection", "lite", "--table", "flights",
              "--key", "id"], project)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["connection"] == "lite"
    assert run(["connections", "remove", "lite"], env).returncode == 0
    assert "lite" not in run(["connections", "list"], env).stdout


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
        added = run(["datasets", "add", "kinds", name, *args], env)
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["kind"] == args[1]
    outside = ["--kind", "files", "--path", "/etc/hosts", "--file-format", "csv"]
    bad = run(["datasets", "add", "kinds", "x", *outside], env)
    assert bad.returncode == 1 and bad.stderr.startswith("400 "), bad.stderr
    assert "x" not in run(["datasets", "list", "kinds"], env).stdout.split()

    out = run(["export", "kinds", "docs", "--file-name", "docs.csv"], env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "COMPLETED rows=50" in out.stdout
    task_id = out.stdout.split("task ")[1].split()[0]
    assert run(["download", "kinds", task_id, "-o", str(tmp_path)], env).returncode == 0
    with open(tmp_path / "docs.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "user.name", "tags"] and len(rows) == 51
    assert rows[2] == ["1", "u1", '["a"]'] and rows[1] == ["0", "u0", ""]


def test_demo_runs_on_a_fresh_directory(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTD_")}
    result = run(
        ["demo", "--rows", "20000", "--data-dir", str(tmp_path / "demo")], env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED" in result.stdout
    [task_dir] = (tmp_path / "demo" / "files" / "exports" / "demo").iterdir()
    manifest = json.loads((task_dir / "manifest.json").read_text())
    [entry] = manifest["files"]
    data = (task_dir / entry["name"]).read_bytes()
    assert entry["rows"] == manifest["total_rows"] > 0
    assert data.count(b"\n") == entry["rows"] + 1  # header + rows (no embedded newlines here)
