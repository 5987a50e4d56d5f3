"""Stubs of the C module (src/native/pgbinary.c)."""

class Unrepresentable(ValueError): ...

class Memory:
    """A buffer owned by one batch (read-only)."""

Column = tuple[int, Memory | None, Memory, Memory | None]

class Reader:
    def __init__(self, ptr: int, kinds: bytes) -> None: ...
    def read(
        self, max_rows: int, max_bytes: int, timeout: float
    ) -> tuple[int, int, list[Column] | None]: ...

def bind(path: str) -> int | None: ...
def copy_chunk(ptr: int, want: int, timeout: float) -> tuple[int, bytes]: ...
