"""DuckDB 1.4 with its postgres and sqlite scanners, in a virtual environment of its own
(`bench/.venv-duckdb`): the scanners ship as wheels (`duckdb-ext-postgres`,
`duckdb-ext-sqlite`) whose extension files are loaded from the wheel's directory, so
nothing is downloaded when a tool runs. The environment is made on first use from the
package index, like `make install`; the project's own dev set keeps its newer DuckDB."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".venv-duckdb"
PACKAGES = [
    "duckdb==1.4.4",
    "duckdb-ext-postgres==1.4.4.20260205",
    "duckdb-ext-sqlite==1.4.4.20260205",
]


def python() -> str:
    """The environment's interpreter, made (once) if it is missing."""
    exe = VENV / "bin" / "python"
    if not exe.exists():
        print(f"  making {VENV} ({', '.join(PACKAGES)}) ...", file=sys.stderr)
        venv.create(VENV, with_pip=True)
        subprocess.run([str(exe), "-m", "pip", "install", "--quiet", *PACKAGES], check=True)
    return str(exe)


def connect() -> Any:  # runs inside the DuckDB environment only
    """A DuckDB connection that loads the scanners from their wheel, never installs."""
    import duckdb
    import duckdb_ext

    extensions = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    con = duckdb.connect(
        config={
            "extension_directory": str(extensions),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": True,
        }
    )
    return con
