"""The README's walkthrough ("The API, step by step") runs as written: its shell blocks
(and its Python block, fed to the venv's python) are extracted and run in order by one
bash, in a fresh directory, against the server its first block starts. Each block must
exit 0, and the file downloaded must match the manifest's sha256.

Two edits only, both so that the test can run next to other work on this machine: the
port 8000 becomes a free one, and the demo dataset is built with 20,000 rows rather than
300,000. `.venv` in the directory points at the interpreter running the tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## The API, step by step"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)


def walkthrough_blocks(readme: str) -> list[tuple[str, str]]:
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(readme[start:end])]


def script(blocks: list[tuple[str, str]], port: int) -> str:
    lines = ["set -euo pipefail"]
    for i, (lang, body) in enumerate(blocks, 1):
        body = body.replace("8000", str(port))
        body = body.replace("exportd demo --data-dir", "exportd demo --rows 20000 --data-dir")
        if lang == "python":
            body = f".venv/bin/python - <<'README_PY'\n{body}README_PY\n"
        lines += [f"echo '::block {i} start'", body, f"printf '\\n::block {i} ok\\n'"]
    return "\n".join(lines) + "\n"


def test_readme_walkthrough_runs(tmp_path: Path) -> None:
    blocks = walkthrough_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 6 and "exportd serve" in blocks[0][1]
    assert any(lang == "python" for lang, _ in blocks)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (tmp_path / "walkthrough.sh").write_text(script(blocks, free_port()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTD_")}
    log = tmp_path / "walkthrough.log"
    with open(log, "wb") as out:
        bash = subprocess.Popen(
            ["bash", "walkthrough.sh"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            code = bash.wait(timeout=600)
        finally:  # the server the walkthrough started, if a block failed before its kill
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bash.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    done = re.findall(r"^::block (\d+) ok$", text, re.M)
    assert code == 0 and len(done) == len(blocks), text[-4000:]
    assert "Traceback" not in text, text[-4000:]

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    [entry] = manifest["files"]
    data = (tmp_path / entry["name"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert data.splitlines()[0] == b"id,carrier,origin,delay"
    assert entry["rows"] == len(data.splitlines()) - 1 > 0
    assert (tmp_path / "sfo.jsonl").stat().st_size > 0  # the command line's export
    assert "admin token in" in text and f"{tmp_path}/exportd-demo/admin_token" in text
