"""Stub of the C writer (src/native/arrowcsv.c): Arrow columns -> PostgreSQL CSV COPY text."""

from typing import Any

# (kind, offset, validity, data, offsets): the Arrow array's buffers
Column = tuple[str, int, Any, Any, Any]

def encode(columns: list[Column], rows: int, /) -> bytes | None: ...
