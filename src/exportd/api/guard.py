"""Input rules that hold for every route, enforced before any handler runs (pure ASGI):

- a request body larger than `max_body_bytes` is refused with 413, whether it announces
  its length or streams it (chunked): at most `max_body_bytes + 1` bytes are ever held;
- a NUL character is refused with 400 in the path, the query string and JSON bodies:
  no exportd input may hold one, and PostgreSQL text cannot store one.

Starlette and uvicorn have no body size limit; this is the small piece that adds it."""

from __future__ import annotations

from typing import Any

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


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def url_holds_nul(scope: Scope) -> bool:
    query = bytes(scope.get("query_string", b"")).lower()
    return "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query


def body_holds_nul(body: bytes) -> bool:
    """A NUL can only reach a JSON string as the escape `\\u0000`; parse only then."""
    if b"\x00" in body:
        return True
    if b"\\u0000" not in body:
        return False
    try:
        return _holds_nul(orjson.loads(body))
    except orjson.JSONDecodeError:
        return False  # not JSON: the route's own parsing refuses it


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
        if self._announced_too_large(scope):
            await self._too_large(send)
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        body, more = await self._read_body(receive)
        if body is None:
            await self._too_large(send)
            return
        if body_holds_nul(body):
            await send_error(send, 400, "INVALID_REQUEST", "NUL characters are not allowed")
            return
        await self.app(scope, _replay(body, more, receive), send)

    def _announced_too_large(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                return not value.isdigit() or int(value) > self.max_body
        return False

    async def _too_large(self, send: Send) -> None:
        msg = f"request body larger than {self.max_body} bytes"
        await send_error(send, 413, "PAYLOAD_TOO_LARGE", msg)

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, list[Message]]:
        """The whole body (None when over the limit), and any non-body messages seen."""
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
