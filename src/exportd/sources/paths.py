"""Files on the server's disk named by an administrator: a path or glob pattern, always
under one of the configured source directories (`EXPORTD_SOURCE_DIRS`). Export callers
never name paths; they name a registered dataset."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

from exportd.errors import BadRequest, SourceError
from exportd.sources.policy import SourcePolicy

_MAGIC = set("*?[")


def _static_prefix(pattern: str) -> str:
    """The directories of a pattern before its first glob component."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if _MAGIC & set(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "/"


def _inside(path: str, root: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def check_pattern(
    pattern: str, roots: list[Path], policy: SourcePolicy | None = None
) -> tuple[str, Path, list[str]]:
    """Validate an administrator's path or glob: absolute, no `..`, under a source
    directory, matching at least one file, and (with the server's policy) unable to
    reach exportd's own data (its tokens, its store, every project's output files)
    even when a source directory holds the data directory. Returns (pattern, its
    root, the files)."""
    if not pattern or "\x00" in pattern or not os.path.isabs(pattern):
        raise BadRequest("path must be an absolute path or glob pattern", "INVALID_PATH")
    if ".." in Path(pattern).parts:
        raise BadRequest("path must not contain '..'", "INVALID_PATH")
    if not roots:
        raise BadRequest(
            "file datasets are disabled: no source directories are configured "
            "(EXPORTD_SOURCE_DIRS)",
            "INVALID_PATH",
        )
    prefix = _static_prefix(pattern)
    root = next((r for r in (Path(os.path.realpath(x)) for x in roots) if _inside(prefix, r)), None)
    if root is None:
        raise BadRequest("path is not under a configured source directory", "INVALID_PATH")
    if policy is not None and policy.reaches_own_data(prefix):
        raise BadRequest("path reaches exportd's own data directory", "INVALID_PATH")
    try:
        files = expand(pattern, root)
    except SourceError as exc:
        raise BadRequest(exc.error_msg, "INVALID_PATH") from None
    if policy is not None and any(policy.is_own_file(f) for f in files):
        raise BadRequest("path reaches exportd's own data directory", "INVALID_PATH")
    return pattern, root, files


def expand(pattern: str, root: Path) -> list[str]:
    """The regular files a pattern matches now, sorted; each must resolve under `root`
    (a symlink pointing outside is refused)."""
    files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        raise SourceError("no file matches the dataset's path", "SOURCE_FILES_MISSING")
    outside = [f for f in files if not _inside(f, root)]
    if outside:
        raise SourceError(
            "a file of the dataset resolves outside its source directory",
            "SOURCE_PATH_OUTSIDE",
        )
    return files


SAMPLE_BYTES = 1 << 20


def _lines_in(path: str, limit: int | None) -> tuple[int, int]:
    """(non-blank lines, bytes read) in the first `limit` bytes of a file (all if None)."""
    with open(path, "rb") as fh:
        data = fh.read() if limit is None else fh.read(limit)
    return sum(1 for line in data.splitlines() if line.strip()), len(data)


def estimate_lines(files: list[str], header_lines: int = 0) -> tuple[int | None, bool]:
    """How many records line-oriented files hold: counted exactly when they are small
    (under 1 MiB together), else extrapolated from the first MiB of the first file.
    Returns (count or None, is_estimate)."""
    sizes = [os.path.getsize(f) for f in files]
    total = sum(sizes)
    if total <= SAMPLE_BYTES:
        counted = sum(_lines_in(f, None)[0] for f in files)
        return max(counted - header_lines * len(files), 0), False
    lines, read = _lines_in(files[0], SAMPLE_BYTES)
    if lines == 0 or read == 0:
        return None, True
    return max(int(total * lines / read) - header_lines * len(files), 0), True


def byte_ranges(files: list[str], parts: int) -> list[dict[str, list[list[object]]]]:
    """Split files into about `parts` partitions of equal bytes: each a list of
    `[path, start, end)` segments. A line belongs to the segment where it starts."""
    sizes = [os.path.getsize(f) for f in files]
    chunk = max(1, -(-sum(sizes) // max(parts, 1)))
    result: list[dict[str, list[list[object]]]] = []
    current: list[list[object]] = []
    room = chunk
    for path, size in zip(files, sizes, strict=True):
        pos = 0
        while pos < size:
            take = min(room, size - pos)
            current.append([path, pos, pos + take])
            pos, room = pos + take, room - take
            if room == 0:
                result.append({"segments": current})
                current, room = [], chunk
    if current or not result:
        result.append({"segments": current})
    return result


def read_lines(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of every line that starts in [start, end) of a file."""
    with open(path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            fh.readline()  # a line begun before `start` belongs to the previous segment
        pos = fh.tell()
        while pos < end:
            line = fh.readline()
            if not line:
                break
            yield pos, line
            pos += len(line)
