"""The file an import reads, as a local path: a file under the source directories as it
is, an object of the local storage in place, any other stored object copied to a
temporary file of the data directory for the time of the read."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exportd.formats.readers import ReadOptions
from exportd.model.plan import ImportSpec
from exportd.runtime import Runtime


def read_options(spec: ImportSpec) -> ReadOptions:
    return ReadOptions(spec.format, spec.compression, spec.header, spec.delimiter, spec.quote)


@contextmanager
def source_file(rt: Runtime, spec: ImportSpec) -> Iterator[Path]:
    if spec.source_path is not None:
        # checked against the source directories at submission (service_imports)
        yield Path(spec.source_path)
        return
    assert spec.source_key is not None
    local = rt.storage.local_path(spec.source_key)
    if local is not None:
        yield local
        return
    folder = rt.settings.data_dir / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".import") as tmp:
        with rt.storage.open_read(spec.source_key) as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        tmp.flush()
        yield Path(tmp.name)
