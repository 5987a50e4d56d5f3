"""Packaging promises: S3 storage without boto3 names the extra to install; the package
declares every third-party module src/ imports; the lock pins what pyproject asks for."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "pydantic_settings": "pydantic-settings",
    "httpx_sse": "httpx-sse",
    "adbc_driver_manager": "adbc-driver-manager",
    "adbc_driver_postgresql": "adbc-driver-postgresql",
    "adbc_driver_sqlite": "adbc-driver-sqlite",
    "botocore": "boto3",
    "prometheus_client": "prometheus-client",
}


def test_s3_without_boto3_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "from exportd.storage import open_storage\n"
        "open_storage('s3://bucket/prefix')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == "exportd.storage.MissingExtra: S3 storage needs boto3: pip install 'exportd[s3]'"
    assert "ModuleNotFoundError" not in result.stderr


def _imported_top_level() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src" / "exportd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "exportd"}


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    for extra in ("s3", "adbc"):
        declared |= _requirement_names(project["optional-dependencies"][extra])
    imported = {DISTRIBUTIONS.get(n, n).lower() for n in _imported_top_level()}
    assert imported - declared == set()


def test_the_lock_pins_every_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for lock, reqs in (
        ("runtime.txt", project["dependencies"]),
        ("dev.txt", project["dependencies"] + project["optional-dependencies"]["dev"]),
    ):
        text = (ROOT / "requirements" / lock).read_text().lower()
        pinned = {m.group(1).replace("_", "-") for m in re.finditer(r"^([\w.-]+)==", text, re.M)}
        wanted = _requirement_names(reqs) - {"exportd"}
        assert {w.replace("_", "-") for w in wanted} - pinned == set(), lock
        # installable on any machine: versions only, never this checkout's path or a URL
        requirements = [x for x in text.splitlines() if x and not x.startswith(("#", " "))]
        assert all(re.fullmatch(r"[\w.-]+==[\w.+!-]+", x) for x in requirements), lock
