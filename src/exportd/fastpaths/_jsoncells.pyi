"""Stub of the C reader (src/native/jsoncells.c): JSON Lines documents -> paths and cells."""

from typing import Any

def cells(
    chunk: Any,
    delimiter: bytes,
    quote: bytes,
    null: bytes,
    spreadsheet_safe: bool,
    render: bool,
    max_paths: int,
    /,
) -> tuple[list[str], int, list[tuple[bytes, bytes]]] | None: ...
