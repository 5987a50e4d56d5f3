"""Input rules that hold for every route, enforced before any handler runs (pure ASGI):

- a request body larger than `max_body_bytes` is refused with 413 and exportd's error
  body, whether it announces its length or streams it (chunked): at most
  `max_body_bytes + 1` bytes are ever held;
- a NUL character in the path or the query string is refused with 400: no id, name or
  filter value may hold one, PostgreSQL text cannot store one, and the check must come
  before any handler looks a value up (bodies are checked field by field, where the
  error can name the field).

FastAPI's own `max_body_size` is not used: its middleware sits outside every app
middleware and answers an announced oversize with a plain-text body, not the API's."""

from __future__ import annotations

import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


async def send_error(send: Send, status: int, code: str, msg: str) -> None:
    body = orjson.dumps({"error_code": code, "error_msg": msg})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def url_holds_nul(scope: Scope) -> bool:
    query = bytes(scope.get("query_string", b"")).lower()
    return "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query


def announced_length(scope: Scope) -> int | None:
    """The Content-Length header's value (-1 when it is not a number), or None."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return None


_UPLOAD_PATH = re.compile(r"^/v1/projects/[^/]+/uploads$")


def is_streamed_upload(scope: Scope) -> bool:
    """`POST /v1/projects/{p}/uploads`: a file for an import, never held in memory."""
    return scope["method"] == "POST" and bool(_UPLOAD_PATH.match(scope.get("path", "")))


class InputGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if url_holds_nul(scope):
            await send_error(send, 400, "INVALID_REQUEST", "NUL characters are not allowed")
            return
        if is_streamed_upload(scope):  # its handler streams it to storage, with its own limit
            await self.app(scope, receive, send)
            return
        length = announced_length(scope)
        if length is not None and not 0 <= length <= self.max_body:
            await self._too_large(send)
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        body, pending = await self._read_body(receive)
        if body is None:
            await self._too_large(send)
            return
        await self.app(scope, _replay(body, pending, receive), send)

    async def _too_large(self, send: Send) -> None:
        msg = f"request body larger than {self.max_body} bytes"
        await send_error(send, 413, "PAYLOAD_TOO_LARGE", msg)

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, list[Message]]:
        """The whole body (None when over the limit), and a non-body message seen."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), [message]
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None, []
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), []


def _replay(body: bytes, pending: list[Message], receive: Receive) -> Receive:
    """The body in one message, then whatever the server says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
