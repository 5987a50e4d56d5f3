"""What the exportd command does to its own process's memory."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from exportd.memory import keep_pandas_out
keep_pandas_out()
import pyarrow as pa, pyarrow.compute as pc
assert pc.cast(pa.array([1, 2]), pa.string()).to_pylist() == ["1", "2"]
assert "pandas" not in sys.modules, "pyarrow loaded pandas"
try:
    import pandas
except ImportError as exc:
    print("refused:", exc)
"""


def test_pandas_stays_out_of_an_exportd_process() -> None:
    """pyarrow would import pandas (46 MB) at its first list conversion; it does not, and
    pyarrow works on without it."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: pandas is kept out")
