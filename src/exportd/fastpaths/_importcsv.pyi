"""Stub of the C check (src/native/importcsv.c): an import's CSV chunk checked and
written as PostgreSQL CSV COPY text."""

from typing import Any

# (file field or -1, kind, nullable, a, b): see importcsv.c
Column = tuple[int, str, bool, int, int]

def check(
    chunk: bytes | memoryview,
    first_line: int,
    sep: str,
    dec: str,
    width: int,
    columns: list[Column],
    nulls: list[bytes],
    bools: tuple[list[bytes], list[bytes]],
    suffix: bytes,
    keys: list[int],
    with_line: bool,
    /,
) -> tuple[bytes, int, bytes, list[Any], list[tuple[int, int, int]]] | None: ...
def scan(chunk: bytes | memoryview, quote: bytes, /) -> tuple[int, bool]: ...
