"""Stub of the C reader (src/native/sqlitecsv.c): SQLite rows -> CSV bytes."""

from typing import Any

sqlite_version: str

class Unrenderable(Exception):
    """A cell the reader cannot render exactly (storage class, text not UTF-8)."""

class Error(Exception):
    """SQLite's own error (open, prepare, bind, step)."""

class Reader:
    def __init__(
        self,
        path: str,
        sql: str,
        params: tuple[Any, ...],
        kinds: str,
        delimiter: str,
        quote: str,
        null: str,
        line_ending: str,
        spreadsheet_safe: bool,
    ) -> None: ...
    @property
    def rows(self) -> int: ...
    def read(self, chunk_bytes: int, max_seconds: float, /) -> bytes: ...
    def close(self) -> None: ...

def float_text(x: float, /) -> str: ...
