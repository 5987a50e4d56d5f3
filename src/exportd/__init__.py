"""exportd: an asynchronous data export service.

`from exportd import Client, AsyncClient` gives the Python client of its API (loaded on
first use, so that the service's own modules do not pay for it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exportd.version import __version__

if TYPE_CHECKING:
    from exportd.cli.client import (
        ApiError,
        AsyncClient,
        Client,
        Dataset,
        ExportdError,
        RequestRefused,
        ServerUnreachable,
        Task,
        TokenInfo,
    )

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Dataset",
    "ExportdError",
    "RequestRefused",
    "ServerUnreachable",
    "Task",
    "TokenInfo",
    "__version__",
]
_CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from exportd.cli import client

        return getattr(client, name)
    raise AttributeError(f"module 'exportd' has no attribute {name!r}")
