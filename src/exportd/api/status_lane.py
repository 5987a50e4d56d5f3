"""The request pollers send all day, `GET /v1/projects/{p}/exports/{id}` with no query
string, answered in front of FastAPI when the answer is already known: `304 Not
Modified` for an `If-None-Match` that holds the task's current tag, or the body the
`StatusCache` holds for that tag. FastAPI's routing, dependency solving and response
validation were two thirds of such a request's CPU.

The lane checks exactly what the route checks, with the same code: the token the route
would read (`Authorization: Bearer`, else `X-Auth-Token`), `ExportService.authenticate`
and `authorize` (reader role) and `task_etag`, in one trip to the thread pool. It never
answers anything else: a cache miss, an error of any kind (no token, another project's
task, a store outage), a long poll (`wait`, a query string) or another method go on to
the route, which answers them as always (and fills the cache). Its answers are the
route's, header for header: `tests/integration/test_status_etag.py` compares them."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from exportd.api.deps import base_url
from exportd.api.status_cache import StatusCache
from exportd.api.v1 import etag_matches, not_modified, status_response
from exportd.model import Role
from exportd.service import ExportService

_PATH = re.compile(r"^/v1/projects/([^/]{1,64})/exports/([^/]{1,64})$")

ANSWERED = Counter(
    "exportd_status_lane_answers",
    "status GETs answered in front of the routes: 304s, and bodies from the status cache",
    ["answer"],
)


def request_token(scope: Scope) -> str | None:
    """The token as the routes read it (deps.bearer_token): `Authorization: Bearer <t>`,
    else `X-Auth-Token`, stripped."""
    auth = x_auth = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            auth = value.decode("latin-1")
        elif name == b"x-auth-token":
            x_auth = value.decode("latin-1")
    token = None
    if auth:
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            token = credentials
    token = token or x_auth
    return token.strip() if token else None


def if_none_match(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            return str(value.decode("latin-1"))
    return None


class StatusLane:
    def __init__(self, app: ASGIApp, api: Any) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            found = _PATH.match(scope["path"])
            if found is not None:
                response = await self._answer(scope, found[1], found[2])
                if response is not None:
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, project_id: str, task_id: str) -> Response | None:
        svc: ExportService | None = getattr(self.api.state, "service", None)
        token = request_token(scope)
        if svc is None or token is None:
            return None

        def head() -> tuple[str, bool] | None:
            try:
                svc.authorize(svc.authenticate(token), project_id, Role.READER)
                return svc.task_etag(project_id, task_id)
            except Exception:  # the route answers it, with its error body
                return None

        # asyncio's own executor: anyio's thread hop (its capacity limiter and cancel
        # scope) cost as much CPU as the lane's whole read
        found = await asyncio.get_running_loop().run_in_executor(None, head)
        if found is None:
            return None
        etag = found[0]
        tag = if_none_match(scope)
        if tag is not None and etag_matches(tag, etag):
            ANSWERED.labels("not_modified").inc()
            return not_modified(etag)
        cache: StatusCache = self.api.state.status_cache
        scope["app"] = self.api  # as Starlette sets it before the routes: base_url reads it
        key = (project_id, task_id, etag, base_url(Request(scope)))
        cached = cache.get(key)
        answer = "cached"
        if cached is None:
            cached, answer = cache.while_building(key), "while_building"
        if cached is None:
            return None
        ANSWERED.labels(answer).inc()
        return status_response(cached.content, cached.headers, etag)
